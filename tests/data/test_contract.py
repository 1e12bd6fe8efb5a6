"""The run's output contract: one answer for every reader, and off by default when it hurts.

A run whose evaluation found that decoding under its contract makes the fine-tuned model's
answers significantly worse must not be served or `generate`d under it by default: the verdict
travels from the eval report through the registry to the server's model list and start-up
message, and to `generate`'s stderr.
"""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from specialize.cli import app
from specialize.constrain import labels_contract
from specialize.data.contract import default_contract, run_contract
from specialize.evaluate.constraint_effect import contract_verdict
from specialize.evaluate.report import write_report
from specialize.records.eval import (
    ConstraintEffect,
    ContenderResult,
    EvalReport,
    PairedComparison,
    Quality,
)
from specialize.registry import AdapterRegistry
from specialize.run_dir import RunDir
from specialize.train.sft import train
from tests.train.conftest import LABELS, tiny_config


def _tuned(mean_diff: float, p_value: float) -> ContenderResult:
    quality = Quality(primary="accuracy", primary_value=0.5)
    effect = ConstraintEffect(
        contract="labels",
        invalid_free=0.1,
        invalid_constrained=0.0,
        quality=quality,
        primary_change=PairedComparison(
            name="mcnemar", metric="accuracy", mean_diff=mean_diff, p_value=p_value
        ),
    )
    return ContenderResult(name="fine-tuned", role="fine-tuned", quality=quality, constrained=effect)


def test_the_verdict_switches_a_contract_off_only_when_it_is_significantly_worse():
    assert contract_verdict(_tuned(-0.20, 0.001)).apply_by_default is False
    assert "lowered the fine-tuned model's accuracy by 0.200" in contract_verdict(_tuned(-0.20, 0.001)).reason
    assert contract_verdict(_tuned(-0.20, 0.30)).apply_by_default is True  # not significant
    assert contract_verdict(_tuned(+0.05, 0.001)).apply_by_default is True  # better, not worse
    unconstrained = ContenderResult(name="fine-tuned", role="fine-tuned", quality=Quality(primary="accuracy"))
    assert contract_verdict(unconstrained).apply_by_default is True


@pytest.fixture(scope="module")
def trained_run(tiny_model_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("contract")
    data = root / "train.jsonl"
    rows = [{"text": f"message {i} about {LABELS[i % 4]}", "label": LABELS[i % 4]} for i in range(24)]
    data.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return train(tiny_config(tiny_model_dir, data, max_steps=2), root / "run").run


def _write_eval(run: RunDir, tuned: ContenderResult) -> EvalReport:
    report = EvalReport(
        run=str(run.path),
        task="classification",
        test_rows=3,
        max_new_tokens=8,
        contenders=[tuned],
        contract_verdict=contract_verdict(tuned),
        headline="fine-tuned: 0.50 accuracy",
    )
    write_report(run.eval_dir, report)
    return report


def test_a_harmful_contract_is_off_by_default_for_generate_registry_and_server(trained_run, tmp_path):
    run = trained_run
    assert run_contract(run) == labels_contract(sorted(LABELS))
    assert default_contract(run).contract == labels_contract(sorted(LABELS)), "not evaluated: applied"

    _write_eval(run, _tuned(-0.25, 0.002))
    assert run.eval_report().contract_verdict.apply_by_default is False
    default = default_contract(run)
    assert default.switched_off and default.contract.kind == "none" and "paired p=0.002" in default.reason
    assert run_contract(run) == labels_contract(sorted(LABELS)), "the recorded contract itself is kept"
    assert "Not applied by default" in (run.eval_dir / "report.md").read_text()

    result = CliRunner().invoke(
        app, ["generate", str(run.path), "message 1 about beta", "--max-new-tokens", "4"]
    )
    assert result.exit_code == 0, result.output
    assert "decoding freely" in result.output and "lowered the fine-tuned model's accuracy" in result.output

    record = AdapterRegistry(tmp_path / "reg").add("harmed", run.path)
    assert record.output_contract == labels_contract(sorted(LABELS)).to_dict()
    assert record.contract_off_reason == default.reason and record.default_contract is None


def test_the_server_decodes_freely_by_default_and_says_why(trained_run, tiny_model_dir, tmp_path):
    import httpx

    from tests.serve.test_app import running_server

    run = trained_run
    _write_eval(run, _tuned(-0.25, 0.002))
    AdapterRegistry(tmp_path / "reg").add("harmed", run.path)
    with running_server(tiny_model_dir, tmp_path / "reg", tmp_path) as (url, server, _):
        assert "harmed" in server.contracts_off()
        models = {m["id"]: m for m in httpx.get(f"{url}/v1/models").json()["data"]}
        assert models["harmed"]["output_contract"] == "none"
        assert "paired p=0.002" in models["harmed"]["output_contract_off"]
        reply = httpx.post(
            f"{url}/v1/chat/completions",
            json={"model": "harmed", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3},
        )
        assert reply.status_code == 200 and reply.headers["x-specialize-constraint"] == "none"
        forced = httpx.post(
            f"{url}/v1/chat/completions",
            json={
                "model": "harmed",
                "messages": [{"role": "user", "content": "hi"}],
                "max_tokens": 3,
                "response_format": {"type": "json_object"},
            },
        )
        assert forced.status_code == 200 and forced.headers["x-specialize-constraint"] == "json_object"
