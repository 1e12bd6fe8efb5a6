"""The command line: exit codes, file:line errors, nothing written on bad input."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from specialize.cli import app

runner = CliRunner()


def test_check_reports_broken_line_missing_field_and_duplicate(tmp_path):
    data = tmp_path / "tickets.jsonl"
    data.write_text(
        '{"prompt": "card lost", "completion": "lost_card"}\n'
        '{"prompt": "card lost", "completion": "lost_card"}\n'
        '{"prompt": "top up failed", "completion": \n'
        '{"prompt": "fees?"}\n'
        '{"prompt": "exchange rate", "completion": "exchange_rate"}\n'
    )
    before = sorted(p.name for p in tmp_path.iterdir())
    result = runner.invoke(app, ["check", str(data), "--no-tokens", "--json"])
    assert result.exit_code == 2, result.output
    report = json.loads(result.output)
    errors = "\n".join(report["errors"])
    assert f"{data}:3" in errors and f"{data}:4: completion" in errors
    assert any(f"{data}:2" in w or f"{data}:1" in w for w in report["warnings"]), report["warnings"]
    assert report["exact_duplicates"]["groups"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == before, "check writes nothing"


def test_check_table_and_clean_data_exit_zero(tmp_path, tiny_model_dir):
    data = tmp_path / "ok.csv"
    data.write_text("text,label\n" + "".join(f"request {i},{'a' if i % 2 else 'b'}\n" for i in range(20)))
    report = tmp_path / "report.json"
    result = runner.invoke(
        app,
        [
            "check",
            str(data),
            "--input-field",
            "text",
            "--output-field",
            "label",
            "--model",
            str(tiny_model_dir),
            "--report",
            str(report),
        ],
    )
    assert result.exit_code == 0, result.output
    assert "Data check" in result.output and "p95" in result.output
    saved = json.loads(report.read_text())
    assert saved["rows"] == 20 and saved["tokens"]["prompt"]["max"] > 0 and saved["estimate"]


def test_check_of_a_missing_file(tmp_path):
    result = runner.invoke(app, ["check", str(tmp_path / "nope.jsonl"), "--no-tokens"])
    assert result.exit_code == 2 and "nope.jsonl" in result.output and "Traceback" not in result.output


def test_train_rejects_a_misspelt_config_key_before_touching_anything(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text("train:\n  epoch: 3\n")
    result = runner.invoke(app, ["train", "-c", str(config), "--out", str(tmp_path / "run")])
    assert result.exit_code == 2 and "did you mean 'epochs'" in result.output
    assert not (tmp_path / "run").exists()


def test_train_needs_data(tmp_path):
    result = runner.invoke(app, ["train", "--out", str(tmp_path / "run")])
    assert result.exit_code == 2 and "no training data" in result.output


def test_generate_with_the_trained_run(tmp_path, tiny_model_dir):
    data = tmp_path / "d.jsonl"
    data.write_text(
        "".join(json.dumps({"input": f"q {i}", "output": "yes" if i % 2 else "no"}) + "\n" for i in range(20))
    )
    out = tmp_path / "run"
    trained = runner.invoke(
        app,
        ["train", "--data", str(data), "--model", str(tiny_model_dir), "--out", str(out), "--max-steps", "2"],
    )
    assert trained.exit_code == 0, trained.output
    # A 2-step random model: only the run's output contract makes its replies exactly "no" or "yes".
    result = runner.invoke(app, ["generate", str(out), "hello", "what now", "--max-new-tokens", "8"])
    assert result.exit_code == 0, result.output
    assert result.output.split() and set(result.output.split()) <= {"no", "yes"}, result.output
    free = runner.invoke(app, ["generate", str(out), "hello", "--max-new-tokens", "3", "--free"])
    assert free.exit_code == 0, free.output
    chat = runner.invoke(app, ["chat", str(out), "--max-new-tokens", "8"], input="hello\n\n")
    assert chat.exit_code == 0 and "loaded" in chat.output
    assert "> no\n" in chat.output or "> yes\n" in chat.output, chat.output


def test_public_api_surface():
    import specialize

    for name in specialize.__all__:
        assert getattr(specialize, name) is not None, name
