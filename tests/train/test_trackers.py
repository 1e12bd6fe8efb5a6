"""Experiment trackers: train.report_to reaches the Trainer, TensorBoard's event files land in the run."""

from __future__ import annotations

import pytest

from specialize.config import parse_config
from specialize.errors import ConfigError
from specialize.train.sft import train
from tests.train.conftest import tiny_config


def test_tensorboard_gets_the_training_logs_in_the_run_directory(tiny_model_dir, memorisable, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    config = tiny_config(tiny_model_dir, memorisable, max_steps=6, report_to="tensorboard")
    result = train(config, tmp_path / "run")
    assert result.record.report_to == ["tensorboard"]
    logs = result.run.tensorboard
    assert list(logs.glob("events.out.tfevents.*")), "event files in RUN/logs/tensorboard"
    events = EventAccumulator(str(logs))
    events.Reload()
    losses = events.Scalars("train/loss")
    assert [e.step for e in losses] == [1, 2, 3, 4, 5, 6] and all(e.value > 0 for e in losses)
    assert not (result.run.checkpoints / "runs").exists(), "not under the checkpoints folder"


def test_no_tracker_by_default_writes_no_event_files(tiny_model_dir, memorisable, tmp_path):
    result = train(tiny_config(tiny_model_dir, memorisable, max_steps=2), tmp_path / "run")
    assert result.record.report_to == [] and not result.run.tensorboard.exists()


def test_an_uninstalled_tracker_is_refused_before_anything_is_written(
    tiny_model_dir, memorisable, tmp_path, monkeypatch
):
    import transformers.integrations

    monkeypatch.setattr(transformers.integrations, "is_wandb_available", lambda: False)
    with pytest.raises(ConfigError, match=r"train.report_to: wandb is not installed; `pip install wandb`"):
        train(tiny_config(tiny_model_dir, memorisable, report_to=["tensorboard", "wandb"]), tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_an_unknown_tracker_names_the_known_ones():
    with pytest.raises(ConfigError, match="train.report_to"):
        parse_config({"train": {"report_to": "comet"}})
