"""The prompts a team would write instead of fine-tuning: zero-shot and few-shot.

The zero-shot prompt is a full instruction: for classification it lists every allowed label, for
JSON it names the fields the answers use, for free text it asks for an answer in the style of
the examples. The few-shot prompt adds k training examples as earlier chat turns, chosen at
random or by lexical similarity to the request (TF-IDF cosine over words: cheap, no model), and
drops the least similar ones until the prompt fits the context window.
"""

from __future__ import annotations

import math
import random
import re
from collections import Counter
from collections.abc import Sequence
from typing import Any

from specialize.data.example import Example
from specialize.models.chat import render_prompt
from specialize.outputs import TaskKind, parse_json_output

_WORD = re.compile(r"\w+", re.UNICODE)


def instruction(
    kind: TaskKind, train: Sequence[Example], labels: Sequence[str] | None, custom: str | None = None
) -> str:
    """The zero-shot instruction; a user-given one may use the `{labels}` placeholder."""
    label_list = "\n".join(f"- {label}" for label in labels or [])
    if custom:
        return custom.replace("{labels}", label_list)
    if kind == "classification":
        return (
            "Classify the user's message into exactly one of the following labels.\n"
            f"{label_list}\n"
            "Answer with the label only, exactly as written above, and nothing else."
        )
    if kind == "json":
        fields = _json_fields(train)
        listed = ", ".join(fields) if fields else "the fields the task needs"
        return (
            "Read the user's message and answer with a single JSON object only, no prose, "
            f"using these keys: {listed}."
        )
    return "Answer the user's message directly and concisely, in the style of a careful expert."


def zero_shot(example: Example, system: str) -> list[dict[str, str]]:
    return [{"role": "system", "content": system}, {"role": "user", "content": example.user_text}]


class FewShotSelector:
    """Pick k demonstrations from the training rows for each request."""

    def __init__(self, train: Sequence[Example], k: int, *, how: str = "similar", seed: int = 0):
        self.train = [e for e in train if e.completion]
        self.k = min(k, len(self.train))
        self.how = how
        self.rng = random.Random(seed)
        docs = [_words(e.user_text) for e in self.train]
        df = Counter(w for doc in docs for w in set(doc))
        n = max(1, len(docs))
        self.idf = {w: math.log((1 + n) / (1 + c)) + 1 for w, c in df.items()}
        self.vectors = [self._vector(doc) for doc in docs]
        self.index: dict[str, list[int]] = {}
        for i, vec in enumerate(self.vectors):
            for w in vec:
                self.index.setdefault(w, []).append(i)

    def _vector(self, words: list[str]) -> dict[str, float]:
        tf = Counter(words)
        vec = {w: c * self.idf.get(w, 1.0) for w, c in tf.items()}
        norm = math.sqrt(sum(v * v for v in vec.values())) or 1.0
        return {w: v / norm for w, v in vec.items()}

    def select(self, example: Example) -> list[Example]:
        if self.k == 0:
            return []
        if self.how == "random":
            return self.rng.sample(self.train, self.k)
        query = self._vector(_words(example.user_text))
        scores: Counter[int] = Counter()
        for w, qv in query.items():
            for i in self.index.get(w, ()):
                scores[i] += qv * self.vectors[i][w]
        text = example.user_text
        ranked = [i for i, _ in scores.most_common() if self.train[i].user_text != text]
        if len(ranked) < self.k:  # pad with random rows when few words overlap
            rest = [i for i in range(len(self.train)) if i not in set(ranked)]
            ranked += self.rng.sample(rest, min(len(rest), self.k - len(ranked)))
        # Most similar last: closest to the request, where small models attend most.
        return [self.train[i] for i in reversed(ranked[: self.k])]


def few_shot(
    example: Example, system: str, shots: Sequence[Example], tokenizer: Any, max_prompt_tokens: int
) -> list[dict[str, str]]:
    """Demonstrations as earlier turns; the most distant ones go first when it does not fit."""
    shots = list(shots)
    while True:
        messages = [{"role": "system", "content": system}]
        for shot in shots:
            messages += [
                {"role": "user", "content": shot.user_text},
                {"role": "assistant", "content": shot.completion or ""},
            ]
        messages.append({"role": "user", "content": example.user_text})
        if not shots or len(tokenizer(render_prompt(tokenizer, messages))["input_ids"]) <= max_prompt_tokens:
            return messages
        shots = shots[1:]


def _words(text: str) -> list[str]:
    return [w.lower() for w in _WORD.findall(text)]


def _json_fields(train: Sequence[Example]) -> list[str]:
    counts: Counter[str] = Counter()
    for e in train[:500]:
        ok, value = parse_json_output(e.completion or "")
        if ok and isinstance(value, dict):
            counts.update(value.keys())
    return [k for k, _ in counts.most_common(30)]
