"""DPO and KTO on the bundled SmolLM2-135M-Instruct, a couple of steps each: the run trains, its
adapter reloads and answers, and metrics.jsonl carries the preference metrics."""

from __future__ import annotations

import json

import pytest

from specialize.config import parse_config
from specialize.inference import generate, load_run
from specialize.train.sft import train

pytestmark = pytest.mark.integration

CARD, RATE = "card_arrival", "exchange_rate"


def _rows(kind: str) -> list[dict]:
    rows = []
    for i in range(16):
        prompt, good, bad = (
            (f"I still have not received my new card, order {i}", CARD, RATE)
            if i % 2
            else (f"What exchange rate do you use for transfer {i}?", RATE, CARD)
        )
        if kind == "dpo":
            rows.append({"prompt": prompt, "chosen": good, "rejected": bad})
        else:
            rows.append({"prompt": prompt, "completion": good if i % 4 < 2 else bad, "label": i % 4 < 2})
    return rows


@pytest.mark.parametrize("kind", ["dpo", "kto"])
def test_preference_run_on_the_bundled_model(kind, tmp_path):
    data = tmp_path / f"{kind}.jsonl"
    data.write_text("\n".join(json.dumps(r) for r in _rows(kind)) + "\n")
    config = parse_config(
        {
            "data": {"train": str(data), "val_fraction": 0.1, "test_fraction": 0.1},
            "model": {"base": "smollm2-135m-instruct", "max_seq_len": 64},
            "method": {"kind": kind, "lora_r": 8},
            "train": {"max_steps": 2, "batch_size": 4, "eval_every": 2, "log_every": 1},
        }
    )
    out = tmp_path / "run"
    result = train(config, out)
    assert result.record is not None and result.record.method == kind and result.record.steps == 2
    logged = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert any("rewards/chosen" in m and "logps/chosen" in m for m in logged)
    trained = load_run(out)
    reply = generate(trained.loaded, [trained.messages_for("Where is my card?")], max_new_tokens=8)
    assert reply[0].text
