"""The adapter registry: versions, names, base-model checks, safetensors only, atomic adds."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from specialize.registry import (
    AdapterNotFoundError,
    AdapterRegistry,
    IncompatibleAdapterError,
    RegistryError,
    check_compatible,
    default_registry_dir,
)
from tests.conftest import make_adapter_run


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_model_dir):
    root = tmp_path_factory.mktemp("runs")
    one = make_adapter_run(root / "one", tiny_model_dir, seed=1)
    (one / "eval").mkdir()
    (one / "eval" / "report.json").write_text(json.dumps({"headline": "accuracy 0.91 vs 0.42 few-shot"}))
    two = make_adapter_run(root / "two", tiny_model_dir, seed=2, rank=8)
    plain = make_adapter_run(root / "plain", tiny_model_dir, seed=3, run_json=False)
    return {"one": one, "two": two, "plain": plain / "adapter"}


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_add_records_metadata_and_copies_the_peft_files(tmp_path, runs, tiny_model_dir):
    from specialize.models.registry import resolve_model, weights_fingerprint

    store = AdapterRegistry(tmp_path / "reg")
    record = store.add("banking77", runs["one"])
    assert record.version == 1 and record.rank == 4 and record.alpha == 8
    assert record.base_fingerprint == weights_fingerprint(resolve_model(str(tiny_model_dir)))
    assert record.base_model_id == Path(tiny_model_dir).name
    assert record.eval_headline == "accuracy 0.91 vs 0.42 few-shot"
    assert record.path == tmp_path / "reg" / "banking77" / "v1"
    assert sorted(p.name for p in record.path.iterdir()) == [
        "adapter_config.json",
        "adapter_model.safetensors",
    ]
    assert record.sha256 == _sha(runs["one"] / "adapter" / "adapter_model.safetensors")
    assert "q_proj" in record.target_modules and record.size_bytes > 0
    assert store.get("banking77") == record
    assert not [p for p in (tmp_path / "reg").iterdir() if p.name.startswith(".")]


def test_re_adding_a_name_creates_a_new_version_and_keeps_the_old_files(tmp_path, runs):
    store = AdapterRegistry(tmp_path / "reg")
    first = store.add("support", runs["one"])
    second = store.add("support", runs["two"])
    assert (first.version, second.version) == (1, 2)
    assert first.key != second.key
    assert _sha(first.path / "adapter_model.safetensors") == first.sha256  # untouched
    assert second.rank == 8
    assert [r.version for r in store.list()] == [2]
    assert [r.version for r in store.list(all_versions=True)] == [1, 2]
    assert store.get("support", 1).sha256 == first.sha256


@pytest.mark.parametrize("name", ["Bad", "-x", ".x", "a" * 65, "a/b", "", "ünï"])
def test_invalid_names_are_refused(tmp_path, runs, name):
    with pytest.raises(RegistryError, match="invalid adapter name"):
        AdapterRegistry(tmp_path / "reg").add(name, runs["one"])


def test_pickled_weights_are_refused(tmp_path, runs):
    adapter = tmp_path / "pickled"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text((runs["plain"] / "adapter_config.json").read_text())
    (adapter / "adapter_model.bin").write_bytes(b"\x80\x04not really a pickle")
    with pytest.raises(RegistryError, match="pickled"):
        AdapterRegistry(tmp_path / "reg").add("x", adapter)


def test_plain_peft_dir_uses_its_base_model_name_or_else_needs_base(tmp_path, runs, tiny_model_dir):
    store = AdapterRegistry(tmp_path / "reg")
    record = store.add("plain", runs["plain"])  # base_model_name_or_path is the tiny model's dir
    assert record.base_model_id == Path(tiny_model_dir).name

    orphan = tmp_path / "orphan"
    orphan.mkdir()
    config = json.loads((runs["plain"] / "adapter_config.json").read_text())
    config["base_model_name_or_path"] = "/nowhere/model"
    (orphan / "adapter_config.json").write_text(json.dumps(config))
    (orphan / "adapter_model.safetensors").write_bytes(
        (runs["plain"] / "adapter_model.safetensors").read_bytes()
    )
    with pytest.raises(RegistryError, match="--base"):
        store.add("orphan", orphan)
    assert store.add("orphan", orphan, base=str(tiny_model_dir)).version == 1


def test_an_adapter_of_another_base_is_refused(tmp_path, runs, tiny_model_dir):
    other = tmp_path / "other"
    other.mkdir()
    (other / "adapter").symlink_to(runs["two"] / "adapter")
    meta = {
        "base_model": {"ref": "other", "kind": "hf-dir", "path": "/x", "model_id": "other-model"},
        "base_fingerprint": "0123456789abcdef",
    }
    (other / "run.json").write_text(json.dumps(meta))
    store = AdapterRegistry(tmp_path / "reg")
    with pytest.raises(IncompatibleAdapterError, match="trained on 'other-model'"):
        store.add("other", other, base=str(tiny_model_dir))
    record = store.add("other", other)  # without --base it is recorded for its own base...
    with pytest.raises(IncompatibleAdapterError, match="other-model"):
        check_compatible(record, "fedcba9876543210", "tiny")  # ...and refused by a server of another


def test_remove_deletes_rows_and_files(tmp_path, runs):
    store = AdapterRegistry(tmp_path / "reg")
    store.add("a", runs["one"])
    store.add("a", runs["two"])
    store.add("b", runs["one"])
    removed = store.remove("a", 1)
    assert [r.version for r in removed] == [1] and not removed[0].path.exists()
    assert [r.version for r in store.list(all_versions=True) if r.name == "a"] == [2]
    store.remove("a")
    assert [r.name for r in store.list()] == ["b"]
    assert not (tmp_path / "reg" / "a").exists()
    with pytest.raises(AdapterNotFoundError):
        store.get("a")
    with pytest.raises(AdapterNotFoundError):
        store.remove("a")


def test_a_failed_add_leaves_nothing_behind(tmp_path, runs, monkeypatch):
    import specialize.registry.store as store_module

    store = AdapterRegistry(tmp_path / "reg")
    calls = []

    def failing_copy(src, dst):
        calls.append(src)
        if len(calls) == 2:
            raise OSError("disk full")
        return "0" * 64

    monkeypatch.setattr(store_module, "_copy_file", failing_copy)
    with pytest.raises(OSError, match="disk full"):
        store.add("a", runs["one"])
    assert store.list() == []
    assert [p.name for p in (tmp_path / "reg").iterdir()] == ["registry.sqlite"]


def test_registry_location_follows_the_environment(tmp_path, monkeypatch):
    monkeypatch.delenv("SPECIALIZE_REGISTRY", raising=False)
    monkeypatch.setenv("SPECIALIZE_HOME", str(tmp_path / "home"))
    assert default_registry_dir() == tmp_path / "home" / "registry"
    monkeypatch.setenv("SPECIALIZE_REGISTRY", str(tmp_path / "elsewhere"))
    assert default_registry_dir() == tmp_path / "elsewhere"
    assert AdapterRegistry().root == tmp_path / "elsewhere"


def test_adapters_commands(tmp_path, runs):
    from typer.testing import CliRunner

    from specialize.cli.adapters import adapters_app

    reg = str(tmp_path / "reg")
    cli = CliRunner()
    added = cli.invoke(adapters_app, ["add", "banking77", str(runs["one"]), "--registry", reg])
    assert added.exit_code == 0, added.output
    assert "banking77 v1" in added.output
    listed = cli.invoke(adapters_app, ["list", "--json", "--registry", reg])
    assert [r["name"] for r in json.loads(listed.output)] == ["banking77"]
    shown = cli.invoke(adapters_app, ["show", "banking77", "--registry", reg])
    assert json.loads(shown.output)["eval_headline"].startswith("accuracy")
    bad = cli.invoke(adapters_app, ["add", "Bad Name", str(runs["one"]), "--registry", reg])
    assert bad.exit_code == 2 and "invalid adapter name" in bad.output
    removed = cli.invoke(adapters_app, ["remove", "banking77", "--registry", reg])
    assert removed.exit_code == 0 and "removed" in removed.output
    missing = cli.invoke(adapters_app, ["show", "banking77", "--registry", reg])
    assert missing.exit_code == 2


LABELS = {"kind": "labels", "labels": ["card_arrival", "exchange_rate"]}

# registry.sqlite as the version before output contracts made it (no output_contract column).
_OLD_SCHEMA = """
CREATE TABLE adapters (
    name TEXT NOT NULL, version INTEGER NOT NULL, path TEXT NOT NULL, base_model_id TEXT NOT NULL,
    base_ref TEXT NOT NULL, base_fingerprint TEXT NOT NULL, rank INTEGER NOT NULL, alpha REAL NOT NULL,
    target_modules TEXT NOT NULL, size_bytes INTEGER NOT NULL, sha256 TEXT NOT NULL, created REAL NOT NULL,
    eval_headline TEXT, source TEXT NOT NULL, PRIMARY KEY (name, version)
)
"""


def _with_contract(tmp_path: Path, run: Path, name: str, contract) -> Path:
    """A copy of `run` whose run.json records `contract` as its output_contract."""
    import shutil

    copy = tmp_path / name
    shutil.copytree(run, copy)
    meta = json.loads((copy / "run.json").read_text())
    meta["output_contract"] = contract
    (copy / "run.json").write_text(json.dumps(meta))
    return copy


def test_the_runs_output_contract_is_recorded_and_round_trips(tmp_path, runs):
    from typer.testing import CliRunner

    from specialize.cli.adapters import adapters_app

    schema = {"kind": "json_schema", "schema": {"type": "object", "properties": {"a": {"type": "integer"}}}}
    store = AdapterRegistry(tmp_path / "reg")
    labeled = store.add("labeled", _with_contract(tmp_path, runs["one"], "labeled", LABELS))
    assert labeled.output_contract == LABELS
    assert store.get("labeled") == labeled and store.get("labeled").output_contract == LABELS
    assert store.add("json", _with_contract(tmp_path, runs["two"], "json", schema)).output_contract == schema
    free = store.add("free", _with_contract(tmp_path, runs["two"], "free", {"kind": "none"}))
    assert free.output_contract == {"kind": "none"}
    assert store.add("old", runs["one"]).output_contract is None  # a run from before contracts
    assert store.add("peft", runs["plain"]).output_contract is None  # no run.json at all
    assert {r.name: r.output_contract for r in store.list()}["json"] == schema
    assert labeled.to_dict()["output_contract"] == LABELS

    listed = CliRunner().invoke(adapters_app, ["list", "--json", "--registry", str(tmp_path / "reg")])
    assert listed.exit_code == 0, listed.output
    assert {r["name"]: r["output_contract"] for r in json.loads(listed.output)}["labeled"] == LABELS
    table = CliRunner().invoke(adapters_app, ["list", "--registry", str(tmp_path / "reg")])
    assert table.exit_code == 0 and "labels (2)" in table.output


@pytest.mark.parametrize(
    ("contract", "reason"),
    [
        ({"kind": "labels", "labels": []}, "empty"),
        ({"kind": "sometimes"}, "unknown output contract kind"),
        ("labels", "must be a JSON object"),
        ({"kind": "json_schema", "schema": {"type": "nope"}}, "schema"),
    ],
)
def test_a_corrupt_output_contract_is_refused_naming_run_json(tmp_path, runs, contract, reason):
    source = _with_contract(tmp_path, runs["one"], "corrupt", contract)
    store = AdapterRegistry(tmp_path / "reg")
    with pytest.raises(RegistryError, match=reason) as caught:
        store.add("corrupt", source)
    assert str(source / "run.json") in str(caught.value) and "output_contract" in str(caught.value)
    assert store.list() == []


def test_a_registry_made_by_the_previous_version_gains_the_column(tmp_path, runs):
    import sqlite3

    root = tmp_path / "reg"
    root.mkdir()
    (root / "old" / "v1").mkdir(parents=True)
    with sqlite3.connect(root / "registry.sqlite") as conn:
        conn.execute(_OLD_SCHEMA)
        conn.execute(
            "INSERT INTO adapters VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
            ("old", 1, "old/v1", "tiny", "{}", "0" * 16, 4, 8.0, '["q_proj"]', 10, "a" * 64, 1.0, None, "/x"),
        )
    conn.close()
    store = AdapterRegistry(root)
    old = store.get("old")
    assert old.version == 1 and old.output_contract is None and old.rank == 4
    added = store.add("old", _with_contract(tmp_path, runs["one"], "labeled", LABELS))
    assert added.version == 2 and store.get("old").output_contract == LABELS
    assert [r.output_contract for r in store.list(all_versions=True)] == [None, LABELS]
    with sqlite3.connect(root / "registry.sqlite") as conn:
        columns = [row[1] for row in conn.execute("PRAGMA table_info(adapters)")]
    conn.close()
    assert (
        columns[14:16] == ["output_contract", "contract_off_reason"] and columns.count("output_contract") == 1
    )
    assert "parent_version" in columns and "eval_report" in columns
    assert AdapterRegistry(root).get("old", 1) == old  # a second opening does not ALTER again
