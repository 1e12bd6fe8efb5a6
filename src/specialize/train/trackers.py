"""Experiment trackers (`train.report_to`): TensorBoard, MLflow, Weights & Biases, via the Trainer.

The Trainer already speaks to every tracker the ecosystem uses; this module only checks, before a
run starts, that the ones asked for are installed (the Trainer would fail at its first log line,
after the model is loaded), and puts TensorBoard's event files in the run directory instead of
under the checkpoints folder where the Trainer's default would put them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from specialize.config import TrainConfig
from specialize.errors import ConfigError

_INSTALL = {"tensorboard": "tensorboard", "mlflow": "mlflow", "wandb": "wandb"}


def requested_trackers(train: TrainConfig) -> list[str]:
    """The trackers a config names, checked to be installed; [] for "none"."""
    from transformers.integrations import is_mlflow_available, is_tensorboard_available, is_wandb_available

    names = [train.report_to] if isinstance(train.report_to, str) else list(train.report_to)
    names = [n for n in dict.fromkeys(names) if n != "none"]
    available = {
        "tensorboard": is_tensorboard_available,
        "mlflow": is_mlflow_available,
        "wandb": is_wandb_available,
    }
    for name in names:
        if not available[name]():
            raise ConfigError(
                f"train.report_to: {name} is not installed; `pip install {_INSTALL[name]}` or drop it"
            )
    return names


def tracker_callbacks(
    trackers: list[str], tensorboard_dir: Path, is_main: bool
) -> tuple[list[str], list[Any]]:
    """(what to pass as the Trainer's report_to, callbacks to add). TensorBoard gets its own
    callback logging to `tensorboard_dir`; the others go through report_to unchanged."""
    others = [t for t in trackers if t != "tensorboard"]
    callbacks: list[Any] = []
    if "tensorboard" in trackers and is_main:
        from transformers.integrations import TensorBoardCallback

        # The callback opens its writer again for logs after training ends (the final validation
        # loss): giving it the directory, not a writer, keeps those in the same place.
        callback = TensorBoardCallback()
        callback.logging_dir = str(tensorboard_dir)
        callbacks.append(callback)
    return (others or ["none"]), callbacks
