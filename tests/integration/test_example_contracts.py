"""Every example dataset in the repo: each training reply is accepted by the output contract its
run would record (issue #13's "never worse by default" starts with a contract that lets the
training data through), checked token by token against the compiled grammar of the bundled
model's tokenizer, as generation applies it."""

from __future__ import annotations

from pathlib import Path

import pytest

from specialize.config import load_config
from specialize.constrain import compile_constraint
from specialize.data.contract import training_contract
from specialize.data.prepare import prepare_splits
from specialize.inference import end_of_turn_ids
from specialize.models.load import load_model

pytestmark = pytest.mark.integration

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
CONFIGS = sorted(p for p in EXAMPLES.glob("*/config.yaml"))


def test_the_repo_has_example_configs():
    assert CONFIGS, f"no example configs under {EXAMPLES}"


@pytest.mark.parametrize("config_path", CONFIGS, ids=lambda p: p.parent.name)
def test_every_training_reply_satisfies_its_runs_contract(config_path):
    config = load_config(config_path)
    splits, _ = prepare_splits(config)
    replies = [e.completion or "" for e in splits.train]
    contract = training_contract(config.data.output_schema, replies)
    assert contract.kind != "none", f"{config_path}: no contract inferred"
    loaded = load_model(config.model.base)
    constraint = compile_constraint(contract, loaded.tokenizer, end_of_turn_ids(loaded))
    rejected = [
        r
        for r in replies
        if not constraint.accepts(loaded.tokenizer(r, add_special_tokens=False)["input_ids"])
    ]
    assert not rejected, f"{len(rejected)} of {len(replies)} training replies rejected, e.g. {rejected[:3]}"
