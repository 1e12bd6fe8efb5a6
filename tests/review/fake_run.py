"""A finished, evaluated run directory written in milliseconds, for the review and studio tests.

Everything is written through the same records and writers training and evaluation use
(RunConfig, RunRecord, Example splits, EvalReport, RunDir), so the files are exactly what a real
run holds; only the predictions are chosen by hand, so that the tests know which rows are errors.
"""

from __future__ import annotations

import json
from pathlib import Path

from specialize.config import parse_config, save_config
from specialize.data.checks import DataReport
from specialize.data.example import Example, Source
from specialize.data.split import Splits, save_splits
from specialize.records.eval import ContenderResult, EvalReport, Interval, Quality, Sample
from specialize.records.run import ExampleCounts, RunRecord
from specialize.run_dir import RunDir

LABELS = ["card", "fees", "loan"]
N_TEST = 12


def _example(i: int, label: str, file: str = "data.jsonl") -> Example:
    return Example(
        messages=[{"role": "user", "content": f"question {i} about my {label}"}],
        completion=label,
        source=Source(file, i + 1),
    )


def _quality(predictions: list[str], references: list[str]) -> Quality:
    per_item = [float(p == r) for p, r in zip(predictions, references, strict=True)]
    accuracy = sum(per_item) / len(per_item)
    confusions: dict[tuple[str, str], int] = {}
    for p, r in zip(predictions, references, strict=True):
        if p != r:
            confusions[(r, p)] = confusions.get((r, p), 0) + 1
    return Quality(
        primary="accuracy",
        primary_value=accuracy,
        values={"accuracy": accuracy},
        ci95={
            "accuracy": Interval(
                value=accuracy, ci_low=max(0, accuracy - 0.2), ci_high=min(1, accuracy + 0.2)
            )
        },
        details={
            "labels": LABELS,
            "confusions": [{"reference": r, "prediction": p, "count": n} for (r, p), n in confusions.items()],
        },
        per_item={"accuracy": per_item},
    )


def make_fake_run(root: Path, name: str = "demo", *, model_dir: Path | None = None) -> RunDir:
    """runs/<name>: config, data report, splits, metrics, run.json and an eval report with three
    contenders. The fine-tuned one is wrong on rows 3 and 7, zero-shot on every third row."""
    run = RunDir(root / name)
    run.path.mkdir(parents=True)
    train = [_example(i, LABELS[i % 3]) for i in range(30)]
    test = [_example(100 + i, LABELS[i % 3]) for i in range(N_TEST)]
    references = [e.completion or "" for e in test]
    config = parse_config(
        {
            "data": {"train": str(root / "data.jsonl"), "input_field": "text", "output_field": "label"},
            "model": {"base": str(model_dir or root / "tiny"), "max_seq_len": 64},
            "train": {"epochs": 1, "batch_size": 4, "threads": 1},
        }
    )
    save_config(config, run.config_file)
    save_splits(Splits(train=train, val=[], test=test), run.splits)
    report = DataReport(
        files=[str(root / "data.jsonl")],
        format="fields",
        task="classification",
        rows=len(train),
        warnings=[f"{root / 'data.jsonl'}:4: near-duplicate of line 2"],
        n_warnings=1,
    )
    run.data_report.write_text(report.model_dump_json(indent=2))
    run.metrics.write_text(
        "".join(
            json.dumps({"step": s, "loss": 3.0 / s, **({"eval_loss": 3.2 / s} if s % 5 == 0 else {})}) + "\n"
            for s in range(1, 21)
        )
    )
    run.write_record(
        RunRecord(
            method="lora",
            task="classification",
            labels=LABELS,
            examples=ExampleCounts(train=30, val=0, test=N_TEST),
            steps=20,
            train_loss=0.15,
            finished_at="2026-12-02T06:00:00Z",
        )
    )
    predictions = {
        "zero-shot": [("fees" if i % 3 == 0 else r) for i, r in enumerate(references)],
        "few-shot (k=2)": [("loan" if i % 4 == 1 else r) for i, r in enumerate(references)],
        "fine-tuned": [
            ("card" if i in (3, 7) and r != "card" else ("fees" if i in (3, 7) else r))
            for i, r in enumerate(references)
        ],
    }
    roles = {"zero-shot": "zero-shot", "few-shot (k=2)": "few-shot", "fine-tuned": "fine-tuned"}
    contenders = [
        ContenderResult(name=n, role=roles[n], quality=_quality(p, references), predictions=p)
        for n, p in predictions.items()
    ]
    eval_report = EvalReport(
        run=str(run.path),
        task="classification",
        labels=LABELS,
        test_rows=N_TEST,
        contenders=contenders,
        samples=[
            Sample(input=e.user_text, reference=r, predictions={n: p[i] for n, p in predictions.items()})
            for i, (e, r) in enumerate(zip(test[:4], references, strict=False))
        ],
        headline="fine-tuned: 0.83 accuracy vs 0.67 zero-shot",
    )
    run.eval_dir.mkdir()
    run.eval_report_file.write_text(eval_report.model_dump_json(indent=2))
    return run


def errors_of(run: RunDir, contender: str = "fine-tuned") -> list[int]:
    report = run.eval_report()
    found = report.contender(contender)
    assert found is not None
    return [i for i, v in enumerate(found.quality.per_item["accuracy"]) if v == 0.0]
