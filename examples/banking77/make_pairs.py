"""Preference pairs from a run's own mistakes: chosen = the true label, rejected = what it said.

    python examples/banking77/make_pairs.py runs/banking77 --out runs/banking77-pairs

The fine-tuned run answers training rows it was not trained on (rows of its `data.train` file
outside its own train, validation and test splits; with `--rows split`, its training split), as
served: greedy, under its default output contract. Every wrong answer becomes a pair
`{prompt, chosen, rejected}` in OUT/pairs.jsonl, the prompt as the chat messages the run sees.

The run's held-out test split becomes OUT/test_pairs.jsonl, so that the preference run is
evaluated on exactly the rows its parent was: rejected is the parent's answer where it was wrong,
else (there is no mistake to reject) a seeded random other label, marked `"rejected_from":
"random"`. OUT/dpo.yaml is the preference run's config: examples/banking77/dpo.yaml with
`method.from_run` set to the run and the two pair files as data.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from specialize.atomic import atomic_write_text
from specialize.data.checks import normalize_text
from specialize.data.example import Example
from specialize.data.formats import load_examples
from specialize.data.prepare import format_spec, read_splits
from specialize.inference import TrainedModel, generate, load_run

HERE = Path(__file__).resolve().parent


@dataclass
class Answered:
    example: Example
    reply: str

    @property
    def wrong(self) -> bool:
        return self.reply.strip() != (self.example.completion or "").strip()


def answer(
    trained: TrainedModel, rows: Sequence[Example], *, batch_size: int = 16, free: bool = False
) -> list[Answered]:
    """The run's replies to `rows`, as `specialize generate` gives them (its default contract)."""
    contract = None if free else trained.default_contract().contract
    labels = {(e.completion or "").strip() for e in rows}
    longest = max((len(trained.loaded.tokenizer(label)["input_ids"]) for label in labels), default=8)
    outputs = generate(
        trained.loaded,
        [e.messages for e in rows],
        max_new_tokens=longest + 8,
        batch_size=batch_size,
        stop=["\n"],
        constraint=contract,
    )
    return [Answered(e, o.text.strip()) for e, o in zip(rows, outputs, strict=True)]


def pair(answered: Answered, rejected: str, rejected_from: str) -> dict[str, Any]:
    e = answered.example
    return {
        "prompt": e.messages,
        "chosen": e.completion,
        "rejected": rejected,
        "rejected_from": rejected_from,
    }


def training_pairs(answered: Sequence[Answered]) -> list[dict[str, Any]]:
    """One pair per wrong answer."""
    return [pair(a, a.reply, "model") for a in answered if a.wrong and a.reply]


def held_out_pairs(answered: Sequence[Answered], labels: Sequence[str], seed: int) -> list[dict[str, Any]]:
    """Every held-out row as a pair: the model's wrong answer, else a random other label."""
    rng = random.Random(seed)
    out = []
    for a in answered:
        if a.wrong and a.reply:
            out.append(pair(a, a.reply, "model"))
        else:
            others = [label for label in labels if label != (a.example.completion or "").strip()]
            out.append(pair(a, rng.choice(others), "random"))
    return out


def candidate_rows(trained: TrainedModel, source: str, limit: int | None, seed: int) -> list[Example]:
    """Training rows to answer: unseen rows of the train file (default), or the training split."""
    splits = read_splits(trained.run)
    if source == "split":
        rows = list(splits.train)
    else:
        config = trained.config
        if not config.data.train:
            raise SystemExit(f"{trained.run.path}: its config has no data.train file to take rows from")
        everything, _, _ = load_examples(config.data.train, format_spec(config))
        used = {
            normalize_text(e.user_text) for split in (splits.train, splits.val, splits.test) for e in split
        }
        # Prompted as the run prompts them: load_examples applies its system prompt and template.
        rows = [e for e in everything if normalize_text(e.user_text) not in used]
    if limit is not None and len(rows) > limit:
        rows = random.Random(seed).sample(rows, limit)
    return rows


def write_jsonl(path: Path, rows: Sequence[dict[str, Any]]) -> None:
    atomic_write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))


def dpo_config(run: Path, out: Path, template: Path = HERE / "dpo.yaml") -> dict[str, Any]:
    config = yaml.safe_load(template.read_text(encoding="utf-8"))
    config.setdefault("method", {})["from_run"] = str(run.resolve())
    config.setdefault("data", {}).update(
        train=str((out / "pairs.jsonl").resolve()), test=str((out / "test_pairs.jsonl").resolve())
    )
    return config


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run", type=Path, help="the fine-tuned run (e.g. runs/banking77)")
    parser.add_argument(
        "--out", type=Path, required=True, help="directory for pairs.jsonl, test_pairs.jsonl, dpo.yaml"
    )
    parser.add_argument(
        "--rows", choices=("file", "split"), default="file", help="which training rows to answer"
    )
    parser.add_argument("--max-rows", type=int, default=2000, help="answer at most this many (seeded sample)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--free", action="store_true", help="answer without the output contract")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    trained = load_run(args.run)
    rows = candidate_rows(trained, args.rows, args.max_rows, args.seed)
    answered = answer(trained, rows, batch_size=args.batch_size, free=args.free)
    pairs = training_pairs(answered)
    if not pairs:
        print(f"{args.run} answered all {len(rows)} rows right: no mistakes to learn from", file=sys.stderr)
        return 1
    labels = (
        trained.record.labels
        if trained.record and trained.record.labels
        else sorted({e.completion or "" for e in rows})
    )
    held_out = answer(trained, read_splits(trained.run).test, batch_size=args.batch_size, free=args.free)
    args.out.mkdir(parents=True, exist_ok=True)
    write_jsonl(args.out / "pairs.jsonl", pairs)
    write_jsonl(args.out / "test_pairs.jsonl", held_out_pairs(held_out, labels, args.seed))
    config = dpo_config(args.run, args.out)
    atomic_write_text(args.out / "dpo.yaml", yaml.safe_dump(config, sort_keys=False, allow_unicode=True))
    wrong_test = sum(a.wrong for a in held_out)
    print(
        f"{len(pairs)} pairs from {len(rows)} training rows ({len(pairs) / len(rows):.1%} answered wrong); "
        f"{len(held_out)} test pairs ({wrong_test} from the run's own mistakes); config {args.out / 'dpo.yaml'}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
