"""Evaluation end to end on a tiny model: three contenders, metrics chosen from the data, a
complete report whose HTML holds every plot."""

from __future__ import annotations

import json
from html.parser import HTMLParser
from pathlib import Path

import pytest
from typer.testing import CliRunner

from specialize.cli import app
from specialize.evaluate.html import PLOTS

runner = CliRunner()


def write_config(tmp_path: Path, model_dir: Path, rows: list[dict], **data) -> Path:
    data_file = tmp_path / "data.jsonl"
    data_file.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    config = {
        "data": {"train": str(data_file), "val_fraction": 0.1, "test_fraction": 0.2, **data},
        "model": {"base": str(model_dir), "max_seq_len": 96},
        "train": {"epochs": 1, "batch_size": 8, "eval_every": 5, "threads": 1},
        "eval": {"few_shot_k": 2, "latency_samples": 2, "bootstrap_resamples": 200, "max_new_tokens": 12},
    }
    path = tmp_path / "config.yaml"
    import yaml

    path.write_text(yaml.safe_dump(config))
    return path


class _Collect(HTMLParser):
    def __init__(self):
        super().__init__()
        self.ids, self.images, self.rows = set(), [], 0

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if "id" in attrs:
            self.ids.add(attrs["id"])
        if tag == "img":
            self.images.append(attrs.get("src", ""))
        if tag == "tr":
            self.rows += 1


def run_cli(config: Path, out: Path):
    result = runner.invoke(app, ["run", str(config), "--out", str(out)])
    assert result.exit_code == 0, result.output
    return json.loads((out / "eval" / "report.json").read_text()), result.output


def test_classification_report_is_complete(tiny_model_dir, tmp_path):
    rows = [
        {"text": f"query {i} about {lab}", "intent": lab}
        for i in range(60)
        for lab in [["card", "loan", "fees"][i % 3]]
    ]
    report, output = run_cli(
        write_config(tmp_path, tiny_model_dir, rows, input_field="text", output_field="intent"),
        tmp_path / "run",
    )
    assert report["task"] == "classification"
    names = [c["name"] for c in report["contenders"]]
    assert names == ["zero-shot", "few-shot (k=2)", "fine-tuned"]
    for c in report["contenders"]:
        q = c["quality"]
        assert q["primary"] == "accuracy" and {"accuracy", "macro_f1", "invalid_rate"} <= set(q["values"])
        ci = q["ci95"]["accuracy"]
        assert ci["ci_low"] <= ci["value"] <= ci["ci_high"]
        assert c["tokens"]["prompt_mean"] > 0 and c["latency"]["samples"] == 2 and c["cost_per_1k"] > 0
        assert len(c["predictions"]) == report["test_rows"]
    # Every contender again under the label set recorded by training: only whole labels.
    assert report["output_contract"] == {"kind": "labels", "labels": ["card", "fees", "loan"]}
    for c in report["contenders"]:
        con = c["constrained"]
        assert set(con["predictions"]) <= {"card", "fees", "loan"} and con["invalid_constrained"] == 0
        assert con["incomplete"] == 0 and con["primary_change"]["metric"] == "accuracy"
        assert con["prevented_share"] == (1.0 if con["invalid_free"] else None)
        assert (
            con["latency_overhead"] > 0
            and con["quality"]["ci95"]["accuracy"]["ci_low"] <= con["quality"]["primary_value"]
        )
    assert (
        "valid replies" in report["headline"]
        and "Under the output contract (labels)" in (tmp_path / "run" / "eval" / "report.md").read_text()
    )
    zero, few, tuned = report["contenders"]
    assert tuned["tokens"]["prompt_mean"] < zero["tokens"]["prompt_mean"] < few["tokens"]["prompt_mean"]
    assert report["comparison"]["name"] == "mcnemar" and report["comparison"]["best_baseline"] in names
    assert report["training"]["curves"]["train"], "loss curve comes from metrics.jsonl"
    assert report["headline"].startswith("fine-tuned:") and "fewer input tokens" in report["headline"]
    assert "fine-tuned" in output and "report.html" in output

    parser = _Collect()
    parser.feed((tmp_path / "run" / "eval" / "report.html").read_text())
    assert {f"plot-{name}" for name in PLOTS} <= parser.ids
    assert len(parser.images) == len(PLOTS) and all(
        src.startswith("data:image/png;base64,") for src in parser.images
    )
    assert parser.rows == 2 * (1 + len(names)), "the summary and the constrained table"
    assert "constrained" in parser.ids
    md = (tmp_path / "run" / "eval" / "report.md").read_text()
    assert report["headline"] in md


def test_json_extraction_dataset_gets_json_metrics(tiny_model_dir, tmp_path):
    rows = [
        {
            "input": f"{name} is {age} years old and lives in {city}",
            "output": {"name": name, "age": age, "city": city},
        }
        for name, age, city in [
            ("Ada", 36, "London"),
            ("Alan", 41, "Manchester"),
            ("Grace", 85, "New York"),
            ("Linus", 54, "Portland"),
            ("Edsger", 72, "Austin"),
        ]
        * 8
    ]
    report, _ = run_cli(write_config(tmp_path, tiny_model_dir, rows), tmp_path / "run")
    assert report["task"] == "json"
    values = report["contenders"][-1]["quality"]["values"]
    assert report["contenders"][-1]["quality"]["primary"] == "field_f1"
    assert {"parse_rate", "exact_match", "field_f1"} <= set(values)
    assert report["labels"] is None
    schema = report["output_contract"]["schema"]
    assert report["output_contract"]["kind"] == "json_schema" and set(schema["required"]) == {
        "name",
        "age",
        "city",
    }
    for c in report["contenders"]:
        con = c["constrained"]
        # A random model runs out of tokens inside strings: exactly the unfinished replies are invalid
        # (tests/constrain/test_decoder.py checks that finished ones validate).
        assert round(con["invalid_constrained"] * len(con["predictions"])) == con["incomplete"]


def test_free_text_dataset_gets_text_metrics(tiny_model_dir, tmp_path):
    words = "the quick brown fox jumps over the lazy dog while my card payment was declined".split()
    rows = [
        {
            "prompt": f"Rewrite politely: {' '.join(words[i % 7 : i % 7 + 5])} number {i}",
            "completion": f"Could you please {' '.join(words[(i * 3) % 9 : (i * 3) % 9 + 4])}, {i}?",
        }
        for i in range(40)
    ]
    report, _ = run_cli(write_config(tmp_path, tiny_model_dir, rows), tmp_path / "run")
    assert report["task"] == "text"
    quality = report["contenders"][-1]["quality"]
    assert quality["primary"] == "rougeL" and {"rougeL", "chrf", "bleu", "exact_match"} <= set(
        quality["values"]
    )
    assert report["comparison"]["name"] != "mcnemar"
    assert report["output_contract"] == {"kind": "none"}
    assert all(c.get("constrained") is None for c in report["contenders"]), "free text has no contract to enforce"


def test_eval_of_a_directory_that_is_not_a_run(tmp_path):
    result = runner.invoke(app, ["eval", str(tmp_path)])
    assert result.exit_code == 2 and "not a run directory" in result.output


@pytest.mark.parametrize("missing", ["splits/test.jsonl"])
def test_eval_without_test_rows_is_a_clear_error(tiny_model_dir, tmp_path, missing):
    rows = [{"text": f"q{i}", "label": "a" if i % 2 else "b"} for i in range(30)]
    config = write_config(tmp_path, tiny_model_dir, rows, input_field="text", output_field="label")
    assert runner.invoke(app, ["train", "-c", str(config), "--out", str(tmp_path / "run")]).exit_code == 0
    (tmp_path / "run" / missing).write_text("")
    result = runner.invoke(app, ["eval", str(tmp_path / "run")])
    assert result.exit_code == 2 and "no test rows" in result.output
    assert not (tmp_path / "run" / "eval").exists()
