"""Run directories written by the previous version still load through the typed records.

`tests/fixtures/run_v1/` was written by the version before run.json and eval/report.json became
typed records (commit e8fb822, `specialize run` on a tiny random model): its run.json, its eval
report, and its training split.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from specialize.constrain import labels_contract
from specialize.data.contract import default_contract, run_contract
from specialize.errors import RunError
from specialize.evaluate.table import constraint_table, summary_table
from specialize.records.eval import EvalReport
from specialize.records.run import RunRecord
from specialize.run_dir import RunDir

FIXTURE = Path(__file__).parent.parent / "fixtures" / "run_v1"


@pytest.fixture
def old_run(tmp_path) -> RunDir:
    shutil.copytree(FIXTURE, tmp_path / "run")
    return RunDir(tmp_path / "run")


def test_an_old_run_json_loads_as_a_run_record(old_run):
    record = old_run.record()
    assert record.task == "classification" and record.labels == ["card", "fees", "loan"]
    assert record.examples.train == 48 and record.steps == 6 and record.base_model.model_id == "tiny"
    assert record.recorded_contract() == labels_contract(["card", "fees", "loan"])
    again = RunRecord.model_validate_json(record.model_dump_json())
    assert again == record, "a record survives being written and read back"


def test_an_old_eval_report_loads_and_renders(old_run):
    report = old_run.eval_report()
    assert [c.role for c in report.contenders] == ["zero-shot", "few-shot", "fine-tuned"]
    assert report.tuned().quality.primary == "accuracy" and report.comparison.name == "mcnemar"
    assert report.tuned().constrained is not None and report.headline.startswith("fine-tuned:")
    raw = json.loads((FIXTURE / "eval" / "report.json").read_text())
    assert report.tuned().quality.primary_value == raw["contenders"][-1]["quality"]["primary_value"]
    assert len(summary_table(report).rows) == 3 and len(constraint_table(report).rows) == 3
    assert report.contract_verdict.apply_by_default, "an old report has no verdict: the contract applies"


def test_a_run_from_before_contracts_gets_the_one_its_training_split_implies(old_run):
    data = json.loads(old_run.meta_file.read_text())
    del data["output_contract"]
    old_run.meta_file.write_text(json.dumps(data))
    assert old_run.record().output_contract is None
    assert run_contract(old_run) == labels_contract(["card", "fees", "loan"])
    assert default_contract(old_run).contract == labels_contract(["card", "fees", "loan"])


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{not json", "not a readable RunRecord"),
        ('{"steps": "many"}', "steps"),
        ('{"output_contract": {"kind": "labels", "labels": []}}', "label set is empty"),
    ],
)
def test_a_damaged_run_json_is_a_clear_error_naming_the_file(old_run, content, message):
    old_run.meta_file.write_text(content)
    with pytest.raises(RunError, match=message) as caught:
        old_run.record()
    assert str(old_run.meta_file) in str(caught.value)


def test_a_damaged_eval_report_is_a_clear_error_and_a_missing_one_says_how_to_make_it(old_run):
    old_run.eval_report_file.write_text('{"contenders": [{"name": 3}]}')
    with pytest.raises(RunError, match="not a readable EvalReport"):
        old_run.eval_report()
    old_run.eval_report_file.unlink()
    with pytest.raises(RunError, match="specialize eval"):
        old_run.eval_report()


def test_a_partial_report_keeps_what_it_holds():
    report = EvalReport.model_validate({"headline": "fine-tuned: 0.9 accuracy"})
    assert report.headline == "fine-tuned: 0.9 accuracy" and report.contenders == []
    with pytest.raises(ValueError, match="no fine-tuned contender"):
        report.tuned()
