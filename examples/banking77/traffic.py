"""Send simulated traffic to a running `specialize serve`, through the official openai client.

    python examples/banking77/traffic.py in  --n 60   # held-out Banking77 test questions
    python examples/banking77/traffic.py out --n 40   # questions from other domains

The server logs every request; `specialize drift runs/banking77 --log ...` then compares that
traffic with the adapter's training data.
"""

from __future__ import annotations

import argparse
import csv
import random
from pathlib import Path

from openai import OpenAI

HERE = Path(__file__).resolve().parent


def questions(kind: str, n: int, seed: int) -> list[str]:
    if kind == "in":
        with (HERE / "test.csv").open(newline="", encoding="utf-8") as handle:
            texts = [row["text"] for row in csv.DictReader(handle)]
    else:
        texts = [
            line for line in (HERE / "out_of_domain.txt").read_text(encoding="utf-8").splitlines() if line
        ]
    random.Random(seed).shuffle(texts)  # the test file is sorted by intent; live traffic is not
    return texts[:n]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("kind", choices=["in", "out"])
    parser.add_argument("--n", type=int, default=60)
    parser.add_argument("--url", default="http://127.0.0.1:8000/v1")
    parser.add_argument("--model", default="banking77")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    client = OpenAI(base_url=args.url, api_key="unused")
    for text in questions(args.kind, args.n, args.seed):
        reply = client.chat.completions.create(
            model=args.model, messages=[{"role": "user", "content": text}], temperature=0, max_tokens=16
        )
        print(f"{text[:60]!r:64} -> {reply.choices[0].message.content}")


if __name__ == "__main__":
    main()
