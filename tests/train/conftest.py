"""Training fixtures: a memorisable labelled file and a tiny-model config, shared by the train tests."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from specialize.config import parse_config

LABELS = ["alpha", "beta", "gamma", "delta"]


@pytest.fixture
def memorisable(tmp_path) -> Path:
    """24 rows, 4 labels, each label tied to a keyword: learnable in a few dozen steps."""
    rows = [{"text": f"message {i} about {LABELS[i % 4]}", "label": LABELS[i % 4]} for i in range(24)]
    path = tmp_path / "train.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return path


def tiny_config(model_dir: Path, data: Path, **train_overrides):
    train_cfg = {
        "epochs": 1,
        "batch_size": 4,
        "learning_rate": 5e-3,
        "eval_every": 5,
        "log_every": 1,
        "early_stopping_patience": None,
        "threads": 1,
    }
    train_cfg.update(train_overrides)
    return parse_config(
        {
            "data": {
                "train": str(data),
                "input_field": "text",
                "output_field": "label",
                "val_fraction": 0.1,
                "test_fraction": 0.1,
            },
            "model": {"base": str(model_dir), "max_seq_len": 64},
            "train": train_cfg,
        }
    )


def losses(run_dir: Path) -> list[float]:
    lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r["loss"] for r in lines if "loss" in r]
