"""`generate --json` (the reply's confidence and alternatives) and `generate --abstain-below`."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from specialize.cli import app

runner = CliRunner()


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, tiny_model_dir):
    root = tmp_path_factory.mktemp("generate")
    data = root / "d.jsonl"
    labels = ["yes", "no", "maybe"]
    data.write_text(
        "".join(json.dumps({"input": f"q {i}", "output": labels[i % 3]}) + "\n" for i in range(30))
    )
    out = root / "run"
    trained = runner.invoke(
        app,
        ["train", "--data", str(data), "--model", str(tiny_model_dir), "--out", str(out), "--max-steps", "2"],
    )
    assert trained.exit_code == 0, trained.output
    return out


def test_generate_json_gives_confidence_and_alternatives(run_dir):
    result = runner.invoke(app, ["generate", str(run_dir), "hello", "what now", "--json"])
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in result.output.splitlines()]
    assert [r["request"] for r in rows] == ["hello", "what now"]
    for row in rows:
        assert row["reply"] in {"yes", "no", "maybe"} and 0 < row["confidence"] <= 1
        others = row["alternatives"]
        assert len(others) == 2 and {o["label"] for o in others} == {"yes", "no", "maybe"} - {row["reply"]}
        assert row["confidence"] + sum(o["probability"] for o in others) == pytest.approx(1.0)
        assert "abstained" not in row


def test_generate_abstains_below_the_threshold(run_dir):
    result = runner.invoke(
        app, ["generate", str(run_dir), "hello", "--abstain-below", "1.0", "--fallback-label", "human"]
    )
    assert result.exit_code == 0, result.output
    assert result.output.strip() == "human"
    shown = runner.invoke(app, ["generate", str(run_dir), "hello", "--abstain-below", "1", "--json"])
    row = json.loads(shown.output)
    # No catch-all label among yes/no/maybe: the default fallback is "unknown".
    assert (
        row["reply"] == "unknown"
        and row["abstained"] is True
        and row["abstained_reply"] in {"yes", "no", "maybe"}
    )
    never = json.loads(
        runner.invoke(app, ["generate", str(run_dir), "hello", "--abstain-below", "0", "--json"]).output
    )
    assert never["abstained"] is False and never["reply"] == row["abstained_reply"]


def test_generate_abstain_errors(run_dir):
    result = runner.invoke(app, ["generate", str(run_dir), "hello", "--abstain-below", "recommended"])
    assert result.exit_code == 2 and "has not been evaluated" in result.output, result.output
    bad = runner.invoke(app, ["generate", str(run_dir), "hello", "--abstain-below", "sure"])
    assert bad.exit_code == 2 and "neither a probability" in bad.output, bad.output
