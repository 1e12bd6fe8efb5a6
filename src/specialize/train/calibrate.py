"""How fast this machine trains this model: a short measured run, cached per model and machine.

`specialize check` turns a dataset's token count into a training-time estimate. A fixed
throughput would only be right for the model and the CPU it was measured on, so the estimate
comes from a calibration instead: a few real optimizer steps of the same training code (the same
precision, attention kernel, packing and adapter) on a sample of the user's own rows. The
result is cached under the cache directory, keyed by the model's weights, the machine (CPU,
cores, torch threads, torch version) and the settings that change the speed, so only the first
check of a model on a machine pays for it.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import platform
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from specialize.atomic import atomic_write_text
from specialize.config import RunConfig
from specialize.models.load import cache_dir
from specialize.models.registry import resolve_model, weights_fingerprint
from specialize.train.sft import train

CALIBRATION_STEPS = 12  # enough that the first step's one-off costs weigh little; seconds on a CPU


@dataclass(frozen=True)
class Calibration:
    """Training throughput measured on this machine: tokens per second as training counts them
    (every input token of the packed rows), over `steps` optimizer steps of batch `batch_size`."""

    tokens_per_second: float
    steps: int
    seconds: float
    batch_size: int
    precision: str
    machine: str
    measured_at: str
    cached: bool = False


def machine_description() -> str:
    """The facts of this machine that set training speed."""
    import torch

    cpu = _cpu_model() or platform.processor() or platform.machine()
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
    return f"{cpu}; {os.cpu_count()} cores; {torch.get_num_threads()} torch threads; {device}; torch {torch.__version__}"


def calibrate(config: RunConfig, data_file: str | Path, *, use_cache: bool = True) -> Calibration:
    """Measure (or read from the cache) the training throughput of `config` on rows of `data_file`."""
    key = _cache_key(config)
    path = cache_dir() / "calibration" / f"{key}.json"
    if use_cache and path.is_file():
        try:
            return Calibration(**{**json.loads(path.read_text(encoding="utf-8")), "cached": True})
        except (ValueError, TypeError):
            pass  # a damaged cache entry is measured again
    measured = _measure(config, Path(data_file))
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(asdict(measured), indent=2) + "\n")
    return measured


def _measure(config: RunConfig, data_file: Path) -> Calibration:

    steps = CALIBRATION_STEPS
    probe = config.model_copy(deep=True)
    probe.data.train = str(data_file)
    probe.data.test = None
    probe.data.val_fraction = 0.0  # no validation passes: only the training step is timed
    probe.data.max_train_examples = probe.train.batch_size * probe.train.grad_accum * steps
    probe.train.max_steps = steps
    probe.train.eval_every = steps + 1  # and no checkpoint saved
    probe.train.log_every = max(1, steps // 3)
    probe.train.early_stopping_patience = None
    probe.train.report_to = "none"
    workdir = Path(tempfile.mkdtemp(prefix="specialize-calibrate-"))
    began = time.perf_counter()
    try:
        result = train(probe, workdir / "run")
        steady = _steady_throughput(result.run.metrics)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    record = result.record
    if record is None or not (steady or record.tokens_per_second):
        raise RuntimeError("the calibration run logged no throughput")
    return Calibration(
        tokens_per_second=float(steady or record.tokens_per_second),
        steps=record.steps,
        seconds=round(time.perf_counter() - began, 2),
        batch_size=probe.train.batch_size * probe.train.grad_accum,
        precision=record.precision,
        machine=machine_description(),
        measured_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    )


def _steady_throughput(metrics: Path) -> float | None:
    """Tokens per second between the first and the last logged step: the first steps pay one-off
    costs (kernel selection, allocator warm-up) that a real run spreads over hundreds of steps."""
    points = []
    for line in metrics.read_text(encoding="utf-8").splitlines() if metrics.is_file() else []:
        entry = json.loads(line)
        if "num_input_tokens_seen" in entry and "time" in entry:
            points.append((entry["time"], entry["num_input_tokens_seen"]))
    if len(points) < 2 or points[-1][0] <= points[0][0]:
        return None
    return (points[-1][1] - points[0][1]) / (points[-1][0] - points[0][0])


def _cache_key(config: RunConfig) -> str:
    ref = resolve_model(config.model.base)
    settings = {
        "model": weights_fingerprint(ref),
        "machine": machine_description(),
        "method": config.method.model_dump(mode="json"),
        "dtype": config.model.dtype,
        "max_seq_len": config.model.max_seq_len,
        "train": config.train.model_dump(
            mode="json",
            include={
                "batch_size",
                "grad_accum",
                "packing",
                "pack_tokens",
                "attention",
                "precision",
                "threads",
            },
        ),
    }
    blob = json.dumps(settings, sort_keys=True).encode("utf-8")
    return hashlib.sha256(blob).hexdigest()[:20]


def _cpu_model() -> str | None:
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8").splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        return None
    return None


@dataclass(frozen=True)
class TrainingPlan:
    """How much work a config makes of a file of `rows` examples."""

    train_rows: int
    val_rows: int
    steps: int
    evaluations: int


def training_plan(config: RunConfig, rows: int, has_test_file: bool) -> TrainingPlan:
    """The rows training sees and the steps it takes, by the same rules as `data.prepare`: the
    validation share (and the test share when there is no test file) is cut from the file first,
    then `max_train_examples` / `max_val_examples` cap what is left."""
    d, t = config.data, config.train
    val = int(round(rows * d.val_fraction))
    test = 0 if has_test_file else int(round(rows * d.test_fraction))
    train = max(rows - val - test, 0)
    if d.max_train_examples:
        train = min(train, d.max_train_examples)
    if d.max_val_examples:
        val = min(val, d.max_val_examples)
    per_step = t.batch_size * t.grad_accum
    steps = t.max_steps or max(1, math.ceil(train * t.epochs / per_step))
    evaluations = (steps // t.eval_every + 1) if val else 0
    return TrainingPlan(train_rows=train, val_rows=val, steps=steps, evaluations=evaluations)


# A validation pass is a forward pass only: about a third of a training step's work per token
# (forward, plus a backward pass that costs about twice the forward).
FORWARD_SHARE = 1 / 3


def estimate_seconds(
    plan: TrainingPlan, tokens_per_row: float, epochs: float, tokens_per_second: float
) -> tuple[float, float]:
    """(training seconds, of which validation seconds) for `plan` at the calibrated throughput."""
    train_tokens = plan.train_rows * tokens_per_row * epochs
    val_tokens = plan.evaluations * plan.val_rows * tokens_per_row
    validation = val_tokens * FORWARD_SHARE / tokens_per_second
    return train_tokens / tokens_per_second + validation, validation
