"""`specialize train` under `accelerate launch` with 2 CPU processes (DDP over gloo).

Both ranks must finish, only rank 0 may write the run directory (but for the Trainer's per-rank
RNG state in checkpoints), and the adapter must equal a
single-process run with the same global batch: 2 processes x 2 rows = 1 process x 4 rows.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from safetensors.torch import load_file

from specialize.config import parse_config
from specialize.train.sft import train

LABELS = ["alpha", "beta", "gamma", "delta"]
ENTRY = Path(__file__).with_name("ddp_entry.py")


def _config(model_dir: Path, data: Path, batch_size: int) -> dict:
    return {
        "data": {
            "train": str(data),
            "input_field": "text",
            "output_field": "label",
            "val_fraction": 0.0,
            "test_fraction": 0.0,
        },
        "model": {"base": str(model_dir), "max_seq_len": 64},
        # fp32: bf16 rounding would differ between the two runs' batch layouts.
        "train": {
            "epochs": 1,
            "batch_size": batch_size,
            "learning_rate": 5e-3,
            "log_every": 1,
            "warmup_ratio": 0.0,
            "early_stopping_patience": None,
            "threads": 1,
            "precision": "fp32",
        },
    }


@pytest.mark.timeout(300)
def test_two_processes_train_like_one_and_only_rank_zero_writes(tiny_model_dir, tmp_path):
    data = tmp_path / "train.jsonl"
    data.write_text(
        "".join(
            json.dumps({"text": f"message {i} about {LABELS[i % 4]}", "label": LABELS[i % 4]}) + "\n"
            for i in range(32)
        )
    )
    single = train(parse_config(_config(tiny_model_dir, data, batch_size=4)), tmp_path / "single")

    config = tmp_path / "ddp.yaml"
    config.write_text(yaml.safe_dump(_config(tiny_model_dir, data, batch_size=2)))
    run_dir, logs = tmp_path / "ddp", tmp_path / "writes"
    logs.mkdir()
    env = {
        **os.environ,
        "SPECIALIZE_TEST_RUN_DIR": str(run_dir),
        "SPECIALIZE_TEST_WRITES": str(logs),
        "OMP_NUM_THREADS": "1",
    }
    launched = subprocess.run(
        [
            sys.executable,
            "-m",
            "accelerate.commands.launch",
            "--multi_gpu",
            "--num_processes",
            "2",
            "--num_machines",
            "1",
            "--mixed_precision",
            "no",
            "--dynamo_backend",
            "no",
            "--main_process_port",
            "0",
            str(ENTRY),
            "train",
            "--config",
            str(config),
            "--out",
            str(run_dir),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=280,
    )
    assert launched.returncode == 0, launched.stderr[-3000:]

    rank0 = (logs / "rank0.log").read_text().splitlines()
    rank1 = (logs / "rank1.log").read_text().splitlines()
    assert rank0[-1] == "finished" and rank1[-1] == "finished"
    # The one thing rank 1 may write: the Trainer saves each rank's RNG state into a checkpoint
    # (rng_state_1.pth, so that a resumed run continues identically) after making sure the
    # checkpoint dir exists. torch.save writes from C++, so only that mkdir shows up here.
    checkpoints = str(run_dir / "checkpoints" / "checkpoint-")
    assert all(line.startswith(f"os.mkdir {checkpoints}") for line in rank1[:-1]), (
        f"rank 1 wrote: {rank1[:5]}"
    )
    assert list(run_dir.glob("checkpoints/checkpoint-*/rng_state_1.pth"))
    assert any("adapter" in line for line in rank0) and any("run.json" in line for line in rank0)
    assert launched.stdout.count("trained ") == 1, "only rank 0 reports"

    meta = json.loads((run_dir / "run.json").read_text())
    assert meta["steps"] == single.record.steps == 8
    one = load_file(tmp_path / "single" / "adapter" / "adapter_model.safetensors")
    two = load_file(run_dir / "adapter" / "adapter_model.safetensors")
    assert one.keys() == two.keys()
    # Same examples per step and the same token-weighted loss; only float summation order differs.
    assert max(float((one[k] - two[k]).abs().max()) for k in one) < 1e-3
    assert max(float(v.abs().max()) for v in one.values()) > 0.05, "the adapter must have moved"
