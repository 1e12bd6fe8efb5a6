"""The fine-tuned adapter as the serving engine runs it, inside the evaluation (`measure_served`):
its replies are the evaluation's, and an adapter the server cannot serve leaves the report without
that row instead of failing the evaluation."""

from __future__ import annotations

import json
import logging

from specialize.config import EvalConfig, ModelConfig, RunConfig
from specialize.evaluate.deployment import measure_served
from specialize.inference import TrainedModel, generate
from specialize.models.load import load_model
from specialize.run_dir import RunDir
from tests.conftest import make_adapter_run

CONVERSATIONS = [
    [{"role": "user", "content": "my card has not arrived"}],
    [{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": "what fees apply?"}],
    [{"role": "user", "content": "x"}],
    [{"role": "user", "content": "a somewhat longer question about a loan " * 3}],
]


def _trained(tmp_path, tiny_model_dir) -> TrainedModel:
    from peft import PeftModel

    run = make_adapter_run(tmp_path / "run", tiny_model_dir, seed=3)
    base = load_model(str(tiny_model_dir))
    base.model = PeftModel.from_pretrained(base.model, str(run / "adapter")).eval()
    config = RunConfig(model=ModelConfig(base=str(tiny_model_dir)))
    return TrainedModel(loaded=base, config=config, run=RunDir(run))


def test_the_served_adapter_answers_as_evaluated_and_is_timed(tmp_path, tiny_model_dir):
    trained = _trained(tmp_path, tiny_model_dir)
    replies = [g.text.strip() for g in generate(trained.loaded, CONVERSATIONS, max_new_tokens=8)]
    served = measure_served(
        trained,
        CONVERSATIONS,
        replies,
        max_new_tokens=8,
        stop=[],
        eval_cfg=EvalConfig(batch_size=2, latency_samples=3),
    )
    assert served is not None
    assert served.rows_compared == len(CONVERSATIONS) and served.replies_equal == len(CONVERSATIONS)
    assert served.latency.samples == 3 and served.latency.batch1_p50_s > 0
    assert served.throughput.batch_size == 2 and served.throughput.requests_per_s > 0
    assert served.tokens_per_s > 0 and served.cost_per_1k > 0
    # A reply that differs is counted as such, not hidden.
    other = measure_served(
        trained,
        CONVERSATIONS,
        ["not this", *replies[1:]],
        max_new_tokens=8,
        stop=[],
        eval_cfg=EvalConfig(latency_samples=0),
    )
    assert other is not None and other.replies_equal == len(CONVERSATIONS) - 1 and other.latency.samples == 0


def test_an_adapter_the_server_cannot_serve_gives_no_row(tmp_path, tiny_model_dir, caplog):
    trained = _trained(tmp_path, tiny_model_dir)
    config_file = trained.run.adapter / "adapter_config.json"
    config = json.loads(config_file.read_text())
    config_file.write_text(json.dumps({**config, "modules_to_save": ["lm_head"]}))
    with caplog.at_level(logging.WARNING, logger="specialize.evaluate.deployment"):
        served = measure_served(
            trained, CONVERSATIONS, [""] * 4, max_new_tokens=4, stop=[], eval_cfg=EvalConfig()
        )
    assert served is None
    assert "not timed in the serving engine" in caplog.text and "modules_to_save" in caplog.text


def test_a_full_fine_tune_has_no_adapter_to_serve(tmp_path, tiny_model_dir):
    trained = _trained(tmp_path, tiny_model_dir)
    (trained.run.adapter / "adapter_config.json").unlink()
    (trained.run.full_model).mkdir()
    (trained.run.full_model / "config.json").write_text("{}")
    assert (
        measure_served(trained, CONVERSATIONS, [], max_new_tokens=4, stop=[], eval_cfg=EvalConfig()) is None
    )
