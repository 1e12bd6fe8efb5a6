"""The loop end to end on the tiny model: drift -> retrain -> promote, a worse challenger kept
out, a leaking row refused with its line, rollback; and the decision rule on figures alone.

The parent learns two intents (alpha, beta), each tied to its keyword; live traffic then brings
two new ones (gamma, delta), which the parent cannot even name (its output contract is its label
set). The challenger trained on the parent's rows plus labelled new rows must win on the new
rows and hold its ground on the parent's frozen test split.
"""

from __future__ import annotations

import http.server
import json
import threading
import time
from pathlib import Path

import pytest

from specialize.errors import DataError
from specialize.loop.decisions import SetComparison, decide
from specialize.loop.retrain import NewRows, RetrainOptions, retrain
from specialize.loop.rows import fingerprint, merge_rows, unseen
from specialize.loop.watch import EXIT_CODES, WatchOptions, parse_every, watch_once
from specialize.registry import AdapterRegistry
from tests.train.conftest import tiny_config

OLD = ["alpha", "beta"]
NEW = ["gamma", "delta"]


def _rows(labels, start, n):
    return [
        {"text": f"message {start + i} about {labels[i % len(labels)]}", "label": labels[i % len(labels)]}
        for i in range(n)
    ]


def _write(path: Path, rows) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def parent(tmp_path_factory, tiny_model_dir):
    """A trained and registered parent: `bank` v1, knowing alpha and beta."""
    from specialize.api import train

    root = tmp_path_factory.mktemp("loop")
    data = _write(root / "train.jsonl", _rows(OLD, 0, 40))
    config = tiny_config(tiny_model_dir, data, epochs=4)
    config.data.test_fraction = 0.2
    config.monitor.min_window = 20
    train(config, root / "parent")
    store = AdapterRegistry(root / "registry")
    store.add("bank", root / "parent")
    return root, store


@pytest.fixture
def fresh_registry(parent, tmp_path):
    """A registry of its own holding the parent as v1, so that tests do not see each other's versions."""
    root, _ = parent
    store = AdapterRegistry(tmp_path / "registry")
    store.add("bank", root / "parent")
    return store


def test_a_leaking_row_is_refused_naming_its_line(parent, fresh_registry, tmp_path):
    root, _ = parent
    test_row = json.loads((root / "parent" / "splits" / "test.jsonl").read_text().splitlines()[0])
    leaked = {"text": test_row["messages"][-1]["content"].upper(), "label": test_row["completion"]}
    new = _write(tmp_path / "new.jsonl", [*_rows(NEW, 100, 2), leaked, *_rows(NEW, 200, 4)])
    with pytest.raises(DataError) as caught:
        retrain("bank", NewRows(data=[new]), RetrainOptions(out=tmp_path / "r"), registry=fresh_registry)
    message = str(caught.value)
    assert f"{new}:3: this request is in the parent's frozen test split" in message
    assert "1 new row(s) refused" in message
    assert not (tmp_path / "r").exists() and fresh_registry.current("bank").version == 1


def test_drift_then_retrain_then_promote_then_rollback(parent, fresh_registry, tmp_path):
    from specialize.serve.request_log import RequestLog

    store = fresh_registry
    log = RequestLog(tmp_path / "requests.sqlite")
    now = time.time()
    for i, row in enumerate(_rows(NEW, 500, 60)):
        log.record(
            model="bank",
            adapter="bank",
            adapter_version=1,
            endpoint="chat.completions",
            prompt=json.dumps([{"role": "user", "content": row["text"]}]),
            completion="alpha",
            prompt_tokens=6,
            completion_tokens=1,
            latency_ms=3.0,
            finish_reason="stop",
            status=200,
            ts=now + i * 0.01,
        )
    log.close()
    inbox = tmp_path / "labelled"
    inbox.mkdir()
    _write(inbox / "first.jsonl", _rows(NEW, 300, 6))
    posts, hook = _webhook()
    options = WatchOptions(
        request_log=tmp_path / "requests.sqlite",
        data_dir=inbox,
        min_rows=20,
        webhook=hook,
        retrain_root=tmp_path / "runs",
    )
    waiting = watch_once("bank", options, registry=store)
    assert waiting.drift_level == "alert" and waiting.outcome == "waiting" and EXIT_CODES["waiting"] == 3
    assert waiting.new_rows == 6 and "waits for 20" in waiting.reason

    _write(inbox / "second.jsonl", _rows(NEW, 400, 24))
    cycle = watch_once("bank", options, registry=store)
    assert cycle.outcome == "promoted", cycle.reason
    decision = cycle.decision
    assert decision.new_rows.current == 0.0 and decision.new_rows.diff_low > 0
    assert decision.old_test.diff_low >= -decision.margin
    assert decision.rows.added + decision.rows.holdout == 30 and decision.rows.duplicates == 0
    current = store.current("bank")
    assert current.version == 2 and current.parent_version == 1 and current.rows_added == decision.rows.added
    assert current.run_dir == decision.challenger_run and current.data_rows == decision.rows.challenger_train
    assert [d.outcome for d in store.decisions("bank")] == ["promoted"]
    report = Path(store.decisions("bank")[0].report)
    assert json.loads(report.read_text())["outcome"] == "promoted"
    assert [p["event"] for p in posts] == ["alert", "waiting", "alert", "retrain_started", "promoted"]
    assert posts[-1]["decision"]["challenger_version"] == 2

    # The next cycle watches the new version's traffic only: none yet.
    quiet = watch_once("bank", options, registry=store)
    assert quiet.version == 2 and quiet.outcome == "no_traffic" and EXIT_CODES[quiet.outcome] == 0

    assert store.rollback("bank").version == 1
    assert store.current("bank").version == 1


def test_a_worse_challenger_is_kept_out(parent, fresh_registry, tmp_path):
    """One optimizer step (still in warm-up) leaves the challenger the untrained base: worse on
    the old test split, so the parent stays in service, and the report says why."""
    new = _write(tmp_path / "new.jsonl", _rows(NEW, 100, 20))
    options = RetrainOptions(out=tmp_path / "r", max_steps=1)
    decision = retrain("bank", NewRows(data=[new]), options, registry=fresh_registry)
    assert decision.outcome == "kept"
    assert "worse on the old test split" in decision.reason or "not significantly better" in decision.reason
    assert decision.old_test.diff < 0
    assert fresh_registry.current("bank").version == 1
    assert fresh_registry.get("bank").version == 2  # registered, not served
    entry = fresh_registry.decisions("bank")[-1]
    assert (entry.outcome, entry.challenger, entry.current) == ("kept", 2, 1)
    assert (tmp_path / "r" / "decision.json").is_file() and (tmp_path / "r" / "new_holdout.jsonl").is_file()


def test_from_parent_starts_the_challenger_from_the_current_adapter(parent, fresh_registry, tmp_path):
    """The same one warm-up step as above: a new adapter is still the untrained base (worse on the
    old test split), a challenger started from the parent's adapter is still the parent (the same
    answers, so no worse), and its run records where it started."""
    from specialize.run_dir import RunDir

    root, _ = parent
    new = _write(tmp_path / "new.jsonl", _rows(NEW, 100, 20))
    options = RetrainOptions(out=tmp_path / "r", max_steps=1, from_parent=True)
    decision = retrain("bank", NewRows(data=[new]), options, registry=fresh_registry)
    assert decision.from_parent and decision.old_test.diff == 0, decision.old_test
    challenger = RunDir(Path(decision.challenger_run))
    assert challenger.config().method.from_run == str((root / "parent").resolve())
    assert challenger.record().from_run == str((root / "parent").resolve())


def test_from_parent_refuses_a_full_fine_tune(tmp_path):
    from specialize.config import parse_config
    from specialize.errors import ConfigError
    from specialize.loop.retrain import _challenger_config
    from specialize.run_dir import RunDir

    config = parse_config({"method": {"kind": "full"}})
    with pytest.raises(ConfigError, match="--from-parent continues the parent's LoRA adapter"):
        _challenger_config(
            config, tmp_path / "a", tmp_path / "b", RetrainOptions(from_parent=True), RunDir(tmp_path)
        )


def test_the_cli_retrain_exits_5_when_kept(parent, fresh_registry, tmp_path):
    from typer.testing import CliRunner

    from specialize.cli import app

    new = _write(tmp_path / "new.jsonl", _rows(NEW, 100, 20))
    args = ["retrain", "bank", "--new", str(new), "--out", str(tmp_path / "r"), "--max-steps", "1"]
    done = CliRunner().invoke(app, [*args, "--registry", str(fresh_registry.root)])
    assert done.exit_code == 5, done.output
    assert "old test split" in done.output and "kept the current version" in done.output


# The rule and the merge, on figures alone -------------------------------------------------------


def _cmp(diff, low, high, current=0.5):
    return SetComparison(
        rows=50,
        metric="accuracy",
        current=current,
        current_low=0,
        current_high=1,
        challenger=current + diff,
        challenger_low=0,
        challenger_high=1,
        diff=diff,
        diff_low=low,
        diff_high=high,
        p_value=0.5,
    )


@pytest.mark.parametrize(
    ("old", "new", "outcome", "why"),
    [
        (_cmp(0.0, -0.01, 0.01), _cmp(0.4, 0.2, 0.6), "promoted", "promoted"),
        (_cmp(-0.05, -0.09, -0.01), _cmp(0.4, 0.2, 0.6), "kept", "worse on the old test split"),
        (_cmp(0.0, -0.01, 0.01), _cmp(0.05, -0.02, 0.12), "kept", "not significantly better"),
        (_cmp(float("nan"), float("nan"), float("nan")), _cmp(0.4, 0.2, 0.6), "kept", "worse"),
    ],
)
def test_decide(old, new, outcome, why):
    got, reason = decide(old, new, margin=0.02)
    assert got == outcome and why in reason


def test_merge_drops_duplicates_replaces_corrections_and_holds_out_a_slice():
    from specialize.data.example import Example, Source

    def ex(text, label, line):
        return Example([{"role": "user", "content": text}], label, Source("new.jsonl", line))

    parent = [ex(f"old {i}", "a", i) for i in range(10)]
    new = [
        ex("old 1", "a", 1),
        ex("Old 2!", "b", 2),
        *[ex(f"new {i}", "c", 10 + i) for i in range(10)],
        ex("new 0", "c", 99),
    ]
    merged = merge_rows(parent, [ex("test row", "a", 1)], new, holdout_fraction=0.3, seed=0)
    assert merged.duplicates == 2 and merged.corrected == 1
    assert merged.added + len(merged.holdout) == 11
    assert not {e.user_text for e in merged.holdout} & {e.user_text for e in merged.train}
    assert "old 2" not in {e.user_text for e in merged.train}  # replaced by the correction
    assert merged.fingerprint == fingerprint(unseen(parent, list(reversed(new))))


def test_parse_every():
    assert [parse_every(t) for t in ("90s", "15m", "1h", "1d", "30")] == [90, 900, 3600, 86400, 30]
    with pytest.raises(Exception, match="duration"):
        parse_every("soon")


def _webhook():
    """A local endpoint that keeps every JSON body posted to it."""
    posts: list[dict] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802 - the stdlib's name
            posts.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return posts, f"http://127.0.0.1:{server.server_address[1]}/hook"


def test_the_cli_watch_once_exit_codes(parent, fresh_registry, tmp_path):
    from typer.testing import CliRunner

    from specialize.cli import app
    from specialize.serve.request_log import RequestLog

    RequestLog(tmp_path / "requests.sqlite").close()
    reg = ["--registry", str(fresh_registry.root)]
    cli = CliRunner()
    done = cli.invoke(app, ["watch", "bank", "--log", str(tmp_path / "requests.sqlite"), "--once", *reg])
    assert done.exit_code == 0, done.output
    assert "bank v1: drift not_enough_data over 0 requests -> no_traffic" in done.output
    both = cli.invoke(app, ["watch", "bank", "--log", "x", "--once", "--every", "1h", *reg])
    assert both.exit_code == 2 and "exactly one of --once and --every" in both.output


def test_a_version_without_its_run_cannot_be_retrained(tmp_path, tiny_model_dir):
    from specialize.registry import RegistryError
    from tests.conftest import make_adapter_run

    store = AdapterRegistry(tmp_path / "registry")
    store.add("bare", make_adapter_run(tmp_path / "bare", tiny_model_dir, seed=1))  # no config.yaml
    new = _write(tmp_path / "new.jsonl", _rows(NEW, 100, 4))
    with pytest.raises(RegistryError, match="not a run directory; retraining needs the run"):
        retrain("bare", NewRows(data=[new]), registry=store)
