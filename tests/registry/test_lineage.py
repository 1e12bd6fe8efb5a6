"""Lineage, the current-version pointer, promote / rollback and their history, decisions."""

from __future__ import annotations

import json
import sqlite3

import pytest
from typer.testing import CliRunner

from specialize.registry import AdapterNotFoundError, AdapterRegistry, DecisionEntry, Lineage, RegistryError
from tests.conftest import make_adapter_run


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_model_dir):
    root = tmp_path_factory.mktemp("lineage-runs")
    made = {}
    for i in (1, 2, 3):
        run = make_adapter_run(root / f"r{i}", tiny_model_dir, seed=i)
        (run / "splits").mkdir()
        rows = [
            json.dumps({"messages": [{"role": "user", "content": f"q{j}"}], "completion": "a"})
            for j in range(i * 3)
        ]
        (run / "splits" / "train.jsonl").write_text("\n".join(rows) + "\n")
        made[i] = run
    return made


def test_a_version_records_its_lineage(tmp_path, runs):
    import hashlib

    store = AdapterRegistry(tmp_path / "reg")
    first = store.add("bank", runs[1])
    second = store.add("bank", runs[2], lineage=Lineage(parent_version=1, rows_added=3), make_current=False)
    assert first.parent_version is None and first.data_rows == 3
    assert second.parent_version == 1 and second.rows_added == 3 and second.data_rows == 6
    train = runs[2] / "splits" / "train.jsonl"
    assert second.data_sha256 == hashlib.sha256(train.read_bytes()).hexdigest()
    assert second.run_dir == str(runs[2].resolve()) and second.eval_report is None
    assert store.get("bank", 2) == second  # round-trips through SQLite


def test_first_version_is_current_a_challenger_is_not_until_promoted(tmp_path, runs):
    store = AdapterRegistry(tmp_path / "reg")
    store.add("bank", runs[1])
    store.add("bank", runs[2], make_current=False)
    assert store.current("bank").version == 1
    assert store.get("bank").version == 2  # the latest is not what is served
    before = store.stamp_path.stat().st_mtime_ns, store.stamp_path.stat().st_ino
    switch = store.promote("bank", 2, reason="won")
    assert (switch.version, switch.previous, switch.action) == (2, 1, "promote")
    assert store.current("bank").version == 2
    assert (store.stamp_path.stat().st_mtime_ns, store.stamp_path.stat().st_ino) != before
    with pytest.raises(RegistryError, match="already the current"):
        store.promote("bank", 2)
    with pytest.raises(AdapterNotFoundError, match="version 9"):
        store.promote("bank", 9)


def test_rollback_walks_back_through_promotions(tmp_path, runs):
    store = AdapterRegistry(tmp_path / "reg")
    for i in (1, 2, 3):
        store.add("bank", runs[i], make_current=False)
    with pytest.raises(RegistryError, match="nothing to roll back to"):
        store.rollback("bank")
    store.promote("bank", 2)
    store.promote("bank", 3)
    assert store.rollback("bank").version == 2
    assert store.rollback("bank").version == 1  # not back to v3
    with pytest.raises(RegistryError, match="nothing to roll back to"):
        store.rollback("bank")
    actions = [(s.action, s.version, s.previous) for s in store.history("bank")]
    assert actions == [
        ("add", 1, None),
        ("promote", 2, 1),
        ("promote", 3, 2),
        ("rollback", 2, 3),
        ("rollback", 1, 2),
    ]


def test_plain_add_keeps_serving_the_latest_as_before(tmp_path, runs):
    store = AdapterRegistry(tmp_path / "reg")
    store.add("bank", runs[1])
    store.add("bank", runs[2])
    assert store.current("bank").version == 2
    assert store.rollback("bank").version == 1


def test_an_older_registry_without_a_pointer_serves_the_latest_and_pins_it_for_a_challenger(tmp_path, runs):
    store = AdapterRegistry(tmp_path / "reg")
    store.add("bank", runs[1])
    store.add("bank", runs[2])
    with sqlite3.connect(store.db_path) as conn:
        conn.execute("DELETE FROM current_versions")
    conn.close()
    assert store.current("bank").version == 2
    store.add("bank", runs[3], make_current=False)
    assert store.current("bank").version == 2


def test_removing_the_current_version_falls_back_to_the_latest(tmp_path, runs):
    store = AdapterRegistry(tmp_path / "reg")
    store.add("bank", runs[1])
    store.add("bank", runs[2], make_current=False)
    store.remove("bank", 1)
    assert store.current("bank").version == 2


def test_decisions_are_kept_in_order(tmp_path, runs):
    store = AdapterRegistry(tmp_path / "reg")
    store.add("bank", runs[1])
    store.record_decision(DecisionEntry("bank", "kept", "worse on the old test split", 2, 1, "/r.json"))
    store.record_decision(DecisionEntry("bank", "promoted", "better on the new rows", 3, 1))
    got = store.decisions("bank")
    assert [(d.outcome, d.challenger, d.current) for d in got] == [("kept", 2, 1), ("promoted", 3, 1)]
    assert got[0].report == "/r.json" and got[0].at > 0


def test_promote_and_rollback_commands(tmp_path, runs):
    from specialize.cli import app

    reg = str(tmp_path / "reg")
    store = AdapterRegistry(reg)
    store.add("bank", runs[1])
    store.add("bank", runs[2], make_current=False)
    cli = CliRunner()
    done = cli.invoke(app, ["adapters", "promote", "bank", "v2", "--registry", reg])
    assert done.exit_code == 0, done.output
    assert "bank v2 is current (was v1)" in done.output
    assert store.current("bank").version == 2
    done = cli.invoke(app, ["adapters", "rollback", "bank", "--registry", reg])
    assert done.exit_code == 0, done.output
    assert "bank v1 is current (was v2)" in done.output
    bad = cli.invoke(app, ["adapters", "promote", "bank", "two", "--registry", reg])
    assert bad.exit_code == 2 and "vN" in bad.output
    listed = cli.invoke(app, ["adapters", "history", "bank", "--registry", reg])
    assert listed.exit_code == 0 and "rollback" in listed.output
