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


def write_config(
    tmp_path: Path, model_dir: Path, rows: list[dict], eval_overrides: dict | None = None, **data
) -> Path:
    data_file = tmp_path / "data.jsonl"
    data_file.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    config = {
        "data": {"train": str(data_file), "val_fraction": 0.1, "test_fraction": 0.2, **data},
        "model": {"base": str(model_dir), "max_seq_len": 96},
        "train": {"epochs": 1, "batch_size": 8, "eval_every": 5, "threads": 1},
        "eval": {
            "few_shot_k": 2,
            "latency_samples": 2,
            "bootstrap_resamples": 200,
            "max_new_tokens": 12,
            **(eval_overrides or {}),
        },
    }
    path = tmp_path / "config.yaml"
    import yaml

    path.write_text(yaml.safe_dump(config))
    return path


class _Collect(HTMLParser):
    def __init__(self):
        super().__init__()
        self.ids, self.images, self.rows = set(), [], 0
        self.table_rows: dict[str, int] = {}  # rows per table id
        self._table = None

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if "id" in attrs:
            self.ids.add(attrs["id"])
        if tag == "table":
            self._table = attrs.get("id")
        if tag == "img":
            self.images.append(attrs.get("src", ""))
        if tag == "tr":
            self.rows += 1
            self.table_rows[self._table] = self.table_rows.get(self._table, 0) + 1


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
    # The classic baseline has its own test below; this one keeps to the language-model contenders.
    report, output = run_cli(
        write_config(
            tmp_path,
            tiny_model_dir,
            rows,
            eval_overrides={"classic_baseline": False},
            input_field="text",
            output_field="intent",
        ),
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
    # The adapter as a single-adapter deployment runs it: merged into a copy of the base, timed the
    # same way, and its greedy replies compared with the unmerged adapter's.
    merged = tuned["merged"]
    assert merged["rows_compared"] == report["test_rows"] and merged["latency"]["samples"] == 2
    assert merged["replies_equal"] >= 0.9 * merged["rows_compared"] and merged["cost_per_1k"] > 0
    assert "latency (adapter merged)" in report["headline"] and "fine-tuned, merged" in output
    # And as `specialize serve` runs it: unmerged, in the batching engine, on a fresh copy of the
    # base; every request at once, then one at a time. In float32 the engine's batched LoRA
    # computes what PEFT computes, so every greedy reply is the evaluation's own.
    served = tuned["served"]
    assert served["rows_compared"] == report["test_rows"] and served["latency"]["samples"] == 2
    assert served["replies_equal"] == served["rows_compared"] and served["cost_per_1k"] > 0
    assert served["tokens_per_s"] > 0 and served["throughput"]["batch_size"] == 16
    assert "fine-tuned, served" in output
    assert "fine-tuned" in output and "report.html" in output

    parser = _Collect()
    parser.feed((tmp_path / "run" / "eval" / "report.html").read_text())
    assert {f"plot-{name}" for name in PLOTS} <= parser.ids
    assert len(parser.images) == len(PLOTS) and all(
        src.startswith("data:image/png;base64,") for src in parser.images
    )
    # The summary: a header, one row per contender and one each for the merged and the served
    # adapter; the constrained table: a header and one row per contender (the worst labels and the
    # confidence table come on top of them).
    assert parser.table_rows["summary"] == 3 + len(names)
    assert parser.table_rows["constrained"] == 1 + len(names)
    assert parser.rows == 4 + 2 * len(names) + parser.table_rows["worst"] + parser.table_rows["confidence"]
    assert "constrained" in parser.ids
    md = (tmp_path / "run" / "eval" / "report.md").read_text()
    assert report["headline"] in md


def test_classic_baseline_and_reply_confidence(tiny_model_dir, tmp_path):
    rows = [
        {"text": f"query {i} about {lab}", "intent": lab}
        for i in range(60)
        for lab in [["card", "loan", "fees"][i % 3]]
    ]
    config = write_config(
        tmp_path,
        tiny_model_dir,
        rows,
        eval_overrides={"target_precision": 0.5},
        input_field="text",
        output_field="intent",
    )
    report, output = run_cli(config, tmp_path / "run")
    names = [c["name"] for c in report["contenders"]]
    assert names == ["zero-shot", "few-shot (k=2)", "fine-tuned", "TF-IDF + logistic regression"]
    classic = report["contenders"][-1]
    assert classic["role"] == "classic" and classic["constrained"] is None and classic["confidence"] is None
    assert classic["tokens"] == {"prompt_mean": 0.0, "completion_mean": 0.0}
    assert classic["latency"]["samples"] == 2 and classic["cost_per_1k"] > 0
    # The label is a word of the request: TF-IDF gets every row, and it is then the best baseline.
    assert classic["quality"]["primary_value"] == 1.0 and set(classic["predictions"]) <= {
        "card",
        "fees",
        "loan",
    }
    assert report["comparison"]["best_baseline"] == "TF-IDF + logistic regression"
    assert "TF-IDF + logistic regression" in report["headline"] and "cost" in report["headline"]
    for c in report["contenders"]:
        assert set(c["quality"]["per_label"]) == {"card", "fees", "loan"}
        assert all(s["support"] > 0 for s in c["quality"]["per_label"].values())

    tuned = report["contenders"][2]
    confidence = tuned["confidence"]
    n = report["test_rows"]
    assert confidence["replies"] == "constrained" and len(confidence["confidence"]) == n
    # Under the label contract every reply is a label, so every row has a confidence.
    assert all(0 < p <= 1 for p in confidence["confidence"]) and len(confidence["correct"]) == n
    assert confidence["correct"] == [
        p == r
        for p, r in zip(tuned["constrained"]["predictions"], _references(tmp_path / "run"), strict=True)
    ]
    assert 0 <= confidence["ece"] <= 1 and len(confidence["bins"]) == 15
    assert 0 <= confidence["top_label_agreement"] <= 1
    assert sum(b["count"] for b in confidence["bins"]) == n
    assert confidence["coverage_curve"][-1]["coverage"] == 1.0 and confidence["target_precision"] == 0.5
    if confidence["threshold"] is not None:
        chosen = next(p for p in confidence["coverage_curve"] if p["threshold"] == confidence["threshold"])
        assert chosen["precision"] >= 0.5 and chosen["coverage"] == confidence["threshold_coverage"]

    md = (tmp_path / "run" / "eval" / "report.md").read_text()
    assert "## Worst labels of the fine-tuned model" in md and "## Confidence" in md
    assert "| TF-IDF + logistic regression |" in md
    parser = _Collect()
    parser.feed((tmp_path / "run" / "eval" / "report.html").read_text())
    assert {"plot-reliability", "plot-coverage", "worst", "confidence"} <= parser.ids
    assert len(parser.images) == len(PLOTS)
    # A header, one row per contender, one each for the adapter merged into the base and served.
    assert parser.table_rows["summary"] == 3 + len(names) and parser.table_rows["confidence"] == 2
    assert parser.table_rows["constrained"] == len(names), (
        "the classic baseline has no contract to decode under"
    )
    assert "Worst labels" in output and "ECE" in output


def _references(run: Path) -> list[str]:
    lines = (run / "splits" / "test.jsonl").read_text().splitlines()
    return [json.loads(line)["completion"] for line in lines if line.strip()]


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
    tuned = report["contenders"][-1]
    assert tuned["quality"]["per_label"] is None and set(tuned["quality"]["per_field"]) <= {
        "name",
        "age",
        "city",
    }
    assert all(c["role"] != "classic" for c in report["contenders"]), "no classic baseline for JSON replies"
    scored = next(c for c in report["contenders"] if c["role"] == "fine-tuned")["json_confidence"]
    assert scored["replies"] == "constrained" and len(scored["mean_logprob"]) == report["test_rows"]
    assert all(m is None or m <= 0 for m in scored["mean_logprob"])
    assert set(scored["field_mean_minimum"]) <= {"name", "age", "city"}
    assert "## Worst fields of the fine-tuned model" in (tmp_path / "run" / "eval" / "report.md").read_text()
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
    assert all(c.get("constrained") is None for c in report["contenders"]), (
        "free text has no contract to enforce"
    )


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
