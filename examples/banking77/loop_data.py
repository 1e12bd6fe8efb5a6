"""Data for the loop demo (`loop.sh`): Banking77 with a handful of intents held back.

    python examples/banking77/loop_data.py split OUT   # writes OUT/{train,test,traffic,labelled/new}.*
    python examples/banking77/loop_data.py send OUT/traffic.txt --n 80

`split` writes the first adapter's training and test files without the held-back intents, the
requests that live traffic will bring (test questions, mostly of the held-back intents), and the
reviewed, labelled examples that arrive afterwards (training rows of the held-back intents plus a
few of the others). `send` sends those requests to a running `specialize serve`.
"""

from __future__ import annotations

import argparse
import csv
import json
import random
from pathlib import Path

HERE = Path(__file__).resolve().parent
# Intents the first adapter never sees; live traffic then asks about them.
HELD_BACK = ["card_arrival", "lost_or_stolen_card", "exchange_rate", "top_up_failed", "pin_blocked"]


def _read(name: str) -> list[dict[str, str]]:
    with (HERE / name).open(newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def _write_csv(path: Path, rows: list[dict[str, str]]) -> None:
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=["text", "category"])
        writer.writeheader()
        writer.writerows(rows)


def split(out: Path, per_intent: int, new_per_intent: int, seed: int) -> None:
    rng = random.Random(seed)
    train, test = _read("train.csv"), _read("test.csv")
    rng.shuffle(train)
    rng.shuffle(test)
    old_train = [r for r in train if r["category"] not in HELD_BACK]
    counts: dict[str, int] = {}
    first: list[dict[str, str]] = []
    for row in old_train:
        if counts.get(row["category"], 0) < per_intent:
            counts[row["category"]] = counts.get(row["category"], 0) + 1
            first.append(row)
    out.mkdir(parents=True, exist_ok=True)
    _write_csv(out / "train.csv", first)
    _write_csv(out / "test.csv", [r for r in test if r["category"] not in HELD_BACK])
    new_rows = [r for r in train if r["category"] in HELD_BACK]
    labelled: list[dict[str, str]] = []
    per: dict[str, int] = {}
    for row in new_rows:
        if per.get(row["category"], 0) < new_per_intent:
            per[row["category"]] = per.get(row["category"], 0) + 1
            labelled.append(row)
    used = {r["text"] for r in first}
    labelled += [r for r in old_train if r["text"] not in used][: len(labelled) // 4]  # a few old intents too
    (out / "labelled").mkdir(exist_ok=True)
    _write_csv(out / "labelled" / "reviewed.csv", labelled)
    traffic = [r["text"] for r in test if r["category"] in HELD_BACK][:60]
    traffic += [r["text"] for r in test if r["category"] not in HELD_BACK][:20]
    rng.shuffle(traffic)
    (out / "traffic.txt").write_text("\n".join(traffic) + "\n", encoding="utf-8")
    print(
        json.dumps(
            {
                "first_adapter_train_rows": len(first),
                "held_back_intents": HELD_BACK,
                "labelled_rows": len(labelled),
                "traffic_requests": len(traffic),
            }
        )
    )


def send(path: Path, n: int, url: str, model: str) -> None:
    from openai import OpenAI

    client = OpenAI(base_url=url, api_key="unused")
    texts = [t for t in path.read_text(encoding="utf-8").splitlines() if t][:n]
    for text in texts:
        client.chat.completions.create(
            model=model, messages=[{"role": "user", "content": text}], temperature=0, max_tokens=16
        )
    print(f"sent {len(texts)} requests to {model}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    s = sub.add_parser("split")
    s.add_argument("out", type=Path)
    s.add_argument("--per-intent", type=int, default=6)
    s.add_argument("--new-per-intent", type=int, default=16)
    s.add_argument("--seed", type=int, default=0)
    t = sub.add_parser("send")
    t.add_argument("traffic", type=Path)
    t.add_argument("--n", type=int, default=80)
    t.add_argument("--url", default="http://127.0.0.1:8077/v1")
    t.add_argument("--model", default="banking77-loop")
    args = parser.parse_args()
    if args.command == "split":
        split(args.out, args.per_intent, args.new_per_intent, args.seed)
    else:
        send(args.traffic, args.n, args.url, args.model)


if __name__ == "__main__":
    main()
