"""OpenAI's `logprobs` fields, and the label distribution extension, from what the engine measured.

Chat completions (`logprobs: true`, `top_logprobs: N`) get OpenAI's shape:

    choices[i].logprobs = {"content": [{"token", "logprob", "bytes", "top_logprobs": [
        {"token", "logprob", "bytes"}, ...]}, ...], "refusal": null}

and completions (`logprobs: N`) the legacy one: `{"tokens", "token_logprobs", "top_logprobs":
[{token: logprob}], "text_offset"}`. `bytes` are the token's own UTF-8 bytes: a byte-level token
may hold half a character, whose `token` is then written `bytes:\\xe2\\x80` as OpenAI does. The
log-probabilities are the model's own (before any output-contract mask, as vLLM reports them), so
under a contract a listed alternative may be a token the contract would not have allowed.

Extension fields (not OpenAI's; clients that do not know them ignore them), on each choice of a
reply decoded under a label contract when the request asked for logprobs or the server abstains:

    label_distribution: [{"label", "probability"}, ...]   every allowed label, most likely first,
                        each scored as a whole reply and normalised over the labels
    confidence:         the probability of the replied label (null: the reply names no label)
    abstained:          true when the confidence was below the server's --abstain-below
                        threshold and the content is the fallback label instead
    abstained_reply:    the label the model had replied, when it abstained
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from specialize.batching.requests import Completion, SamplingParams, TokenLogprob
from specialize.constrain import OutputContract
from specialize.errors import ConfigError, ConstraintError, RunError
from specialize.evaluate.abstention import Abstention
from specialize.models.label_scores import LabelTrie
from specialize.registry.store import AdapterRecord
from specialize.serve.options import ServeOptions
from specialize.serve.protocol import ChatCompletionRequest, SamplingBody

log = logging.getLogger(__name__)


def token_text(raw: bytes) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return "bytes:" + "".join(f"\\x{b:02x}" for b in raw)


class TokenSpeller:
    """Token ids to their bytes (cached): the table the constraints use, or the tokenizer's
    decoding for tokenizers llguidance cannot read."""

    def __init__(self, tokenizer: Any, eos: Sequence[int]):
        self.tokenizer = tokenizer
        self.eos = tuple(sorted(eos))
        self._cache: dict[int, bytes] = {}

    def bytes_of(self, token: int) -> bytes:
        found = self._cache.get(token)
        if found is None:
            from specialize.constrain.decoder import token_bytes

            try:
                found = token_bytes(self.tokenizer, self.eos, [token])[0]
            except ConstraintError:
                found = self.tokenizer.decode([token]).encode("utf-8")
            self._cache[token] = found
        return found

    def entry(self, token: int, logprob: float) -> dict[str, Any]:
        raw = self.bytes_of(token)
        return {"token": token_text(raw), "logprob": logprob, "bytes": list(raw)}


def chat_logprobs(speller: TokenSpeller, entries: Sequence[TokenLogprob]) -> dict[str, Any]:
    """A chat choice's (or stream chunk's) `logprobs` object for these tokens."""
    content = []
    for e in entries:
        item = speller.entry(e.token_id, e.logprob)
        item["top_logprobs"] = [speller.entry(t, lp) for t, lp in e.top]
        content.append(item)
    return {"content": content, "refusal": None}


def completion_logprobs(
    speller: TokenSpeller, entries: Sequence[TokenLogprob], offset: int = 0
) -> dict[str, Any]:
    """A completion choice's legacy `logprobs` object; `offset` is where the first token's text
    starts in the completion (stream chunks continue the previous ones)."""
    tokens, logprobs, tops, offsets = [], [], [], []
    at = offset
    for e in entries:
        text = token_text(speller.bytes_of(e.token_id))
        tokens.append(text)
        logprobs.append(e.logprob)
        # OpenAI always includes the sampled token, so there may be N + 1 entries.
        top = {token_text(speller.bytes_of(t)): lp for t, lp in e.top}
        top.setdefault(text, e.logprob)
        tops.append(top)
        offsets.append(at)
        at += len(text)
    return {"tokens": tokens, "token_logprobs": logprobs, "top_logprobs": tops, "text_offset": offsets}


@dataclass(frozen=True)
class LabelReply:
    """What a label reply becomes on the wire: its content, maybe abstained, and the extension fields."""

    content: str
    fields: dict[str, Any]


def label_reply(
    text: str,
    labels: Sequence[str],
    probabilities: Sequence[float] | None,
    abstention: Abstention | None,
) -> LabelReply:
    """The served content and the extension fields for one reply under a label contract."""
    if probabilities is None:  # scoring failed (logged by the engine): the reply stands as it is
        return LabelReply(text, {"label_distribution": None, "confidence": None})
    reply = text.strip()
    by_label = dict(zip(labels, probabilities, strict=True))
    confidence = by_label.get(reply)
    ranked = sorted(by_label.items(), key=lambda kv: -kv[1])
    fields: dict[str, Any] = {
        "label_distribution": [{"label": label, "probability": p} for label, p in ranked],
        "confidence": confidence,
    }
    if abstention is None:
        return LabelReply(text, fields)
    served, abstained = abstention.apply(text, confidence)
    fields["abstained"] = abstained
    if abstained:
        fields["abstained_reply"] = text
    return LabelReply(served, fields)


@dataclass
class Annotation:
    """What one request asked for beyond the text, and how its response and chunks carry it.

    `top` is None when no logprobs were asked for; `labels` is set when the reply is decoded under
    a label contract and its distribution is scored; `abstention` when the server abstains on
    this adapter. An abstaining stream holds its text back until the reply is scored (a label is
    a few tokens), since a fallback cannot replace text already sent.
    """

    chat: bool
    speller: TokenSpeller
    top: int | None = None
    labels: tuple[str, ...] | None = None
    abstention: Abstention | None = None
    sent: int = 0  # logprob entries already streamed
    offset: int = 0  # characters of completion text already streamed (legacy text_offset)

    @property
    def holds_text(self) -> bool:
        return self.abstention is not None and self.labels is not None

    def logprobs(self, entries: Sequence[TokenLogprob] | None, text: str = "") -> dict[str, Any] | None:
        """The `logprobs` object for these entries (None when not asked for); advances the stream
        position past them and past `text`."""
        if self.top is None or entries is None:
            return None
        self.sent += len(entries)
        shaped = (
            chat_logprobs(self.speller, entries)
            if self.chat
            else completion_logprobs(self.speller, entries, self.offset)
        )
        self.offset += len(text)
        return shaped

    def finish(self, done: Completion) -> tuple[str, dict[str, Any] | None, dict[str, Any]]:
        """(content, logprobs of the tokens not sent yet, extension fields) of a finished reply."""
        remaining = done.logprobs[self.sent :] if done.logprobs is not None else None
        content, extra = done.text, {}
        if self.labels is not None:
            shaped = label_reply(done.text, self.labels, done.label_probabilities, self.abstention)
            content, extra = shaped.content, shaped.fields
        return content, self.logprobs(remaining, content), extra


def adapter_abstention(
    run_dir: str | None, labels: Sequence[str], below: str | float | None, fallback: str | None
) -> Abstention | None:
    """The abstention `serve --abstain-below` gives one adapter, from its run (its recommended
    threshold, its catch-all class); None, with a warning, when the run cannot provide it."""
    if below is None:
        return None
    from specialize.evaluate.abstention import parse_threshold, run_abstention
    from specialize.run_dir import RunDir

    threshold = parse_threshold(below)
    try:
        if run_dir is None:
            raise RunError("the adapter names no run directory")
        return run_abstention(RunDir(Path(run_dir)), labels, threshold, fallback)
    except (RunError, ConfigError, OSError) as exc:
        if isinstance(threshold, float):  # a number needs no run: fall back on the label names
            from specialize.evaluate.abstention import DEFAULT_FALLBACK, detect_catch_all

            return Abstention(threshold, fallback or detect_catch_all(labels) or DEFAULT_FALLBACK)
        log.warning("not abstaining on %s: %s", run_dir, exc)
        return None


class Annotator:
    """What the server adds to a request for logprobs and abstention, with what it costs built once:
    per adapter version its abstention setting, per label set its replies as a token trie."""

    def __init__(self, tokenizer: Any, eos_ids: Sequence[int], options: ServeOptions):
        self.tokenizer, self.eos_ids, self.options = tokenizer, list(eos_ids), options
        self.speller = TokenSpeller(tokenizer, self.eos_ids)
        self._abstentions: dict[str, Abstention | None] = {}  # by AdapterRecord.key
        self._tries: dict[tuple[str, ...], LabelTrie] = {}

    def annotate(
        self,
        body: SamplingBody,
        adapter: AdapterRecord | None,
        contract: OutputContract,
        params: SamplingParams,
    ) -> tuple[SamplingParams, Annotation]:
        """Logprobs when asked for; under the adapter's label contract, the label distribution
        (when logprobs are asked for, or the server abstains) and the abstention."""
        top = body.top_logprobs_wanted()
        labels = contract.labels if contract.kind == "labels" else None
        abstention = None
        if labels and adapter is not None and body.response_format is None:
            if adapter.key not in self._abstentions:
                self._abstentions[adapter.key] = adapter_abstention(
                    adapter.run_dir or adapter.source,
                    labels,
                    self.options.abstain_below,
                    self.options.fallback_label,
                )
            abstention = self._abstentions[adapter.key]
        scored = labels if labels and (top is not None or abstention is not None) else None
        trie = None
        if scored:
            trie = self._tries.get(scored)
            if trie is None:
                trie = self._tries[scored] = LabelTrie.for_model(self.tokenizer, self.eos_ids, scored)
        annotation = Annotation(
            chat=isinstance(body, ChatCompletionRequest),
            speller=self.speller,
            top=top,
            labels=scored,
            abstention=abstention if scored else None,
        )
        return dataclasses.replace(params, logprobs=top, labels=trie), annotation
