"""`specialize watch NAME`: drift check, and on an alert with enough new labelled rows, a retrain.

One cycle:

1. the drift report (`monitor.drift.run_drift`, the checks and thresholds of `specialize drift`:
   the current version's run config `monitor:` section, else the calibrated defaults) of NAME's
   requests since its current version went into service: the traffic of a version it replaced
   says nothing about the one now serving;
2. no alert: done (`quiet`, or `warn`);
3. an alert: the webhook hears of it; the folder of new labelled rows is read, and rows the
   current version already learnt are not counted; fewer than `min_rows`, or exactly the rows a
   kept challenger was already trained on: `waiting` for more;
4. otherwise `loop.retrain.retrain`, its decision (promoted or kept) posted to the webhook.

Exit codes (`EXIT_CODES`), so that cron and CI can act on them: 0 quiet or warn (or too little
traffic to judge), 3 an alert without a retrain (no folder of rows, or not enough rows yet; the
code of `specialize drift`'s alert), 4 a challenger was promoted, 5 a challenger was kept out,
2 a user error (bad arguments, a refused row).
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from specialize.config import DriftConfig
from specialize.data.prepare import read_splits
from specialize.errors import ConfigError, SpecializeError
from specialize.loop.decisions import CycleOutcome, RetrainDecision, WatchCycle
from specialize.loop.retrain import NewRows, RetrainOptions, parent_run, retrain
from specialize.loop.rows import fingerprint, read_new_rows, unseen
from specialize.monitor.drift import load_drift_config, run_drift
from specialize.monitor.profile import load_run_tokenizer, write_profile
from specialize.monitor.webhook import post_json
from specialize.registry import AdapterRegistry

log = logging.getLogger(__name__)

EXIT_CODES: dict[CycleOutcome, int] = {
    "quiet": 0,
    "warn": 0,
    "no_traffic": 0,
    "alert": 3,
    "waiting": 3,
    "promoted": 4,
    "kept": 5,
}
DATA_SUFFIXES = (".jsonl", ".json", ".csv", ".parquet")


@dataclass
class WatchOptions:
    request_log: Path
    data_dir: Path | None = None  # new labelled rows: every data file in it, in the parent's format
    min_rows: int = 20  # new rows (not already learnt) needed before a retrain
    webhook: str | None = None
    drift_config: Path | None = None  # default: the current version's run config `monitor:` section
    window: int | None = None  # requests tested (default: the drift config's max_window)
    retrain: RetrainOptions = field(default_factory=RetrainOptions)
    retrain_root: Path = Path("runs")  # retrain directories go here, one per retrain

    def __post_init__(self) -> None:
        if self.min_rows < 2:
            raise ConfigError(f"min rows must be at least 2, got {self.min_rows}")


def watch_once(name: str, options: WatchOptions, *, registry: AdapterRegistry | None = None) -> WatchCycle:
    """One cycle; see the module docstring."""
    store = registry or AdapterRegistry()
    current = store.current(name)
    run = parent_run(current)
    config = _drift_config(run.path, options)
    tokenizer = load_run_tokenizer(run)
    if not run.profile.is_file():  # as `specialize drift` does: a run trained before profiles
        write_profile(run, tokenizer)
    report = run_drift(
        run.path,
        options.request_log,
        config,
        adapter=name,
        since=store.current_since(name),
        tokenizer=tokenizer,
        plots=False,
    )
    base = {
        "name": name,
        "version": current.version,
        "drift_level": report.level,
        "drift_message": report.message,
        "requests": report.n_used,
    }
    if report.level != "alert":
        outcome: CycleOutcome = {"ok": "quiet", "warn": "warn"}.get(report.level, "no_traffic")  # type: ignore[assignment]
        return WatchCycle(**base, outcome=outcome, reason=report.message)
    _post(options, "alert", base)
    if options.data_dir is None:
        return _finish(options, WatchCycle(**base, outcome="alert", reason=f"drift alert: {report.message}"))
    files = data_files(options.data_dir)
    config_run = run.config()
    splits = read_splits(run)
    rows = [row for path in files for row in read_new_rows(path, config_run)]
    fresh = unseen([*splits.train, *splits.val], rows)
    counts = {"new_rows": len(fresh), "min_rows": options.min_rows}
    if len(fresh) < options.min_rows:
        reason = (
            f"drift alert, and {len(fresh)} new labelled row(s) in {options.data_dir}; "
            f"a retrain waits for {options.min_rows}"
        )
        return _finish(options, WatchCycle(**base, **counts, outcome="waiting", reason=reason))
    tried = _already_tried(store, name, current.version, fingerprint(fresh))
    if tried is not None:
        reason = (
            f"drift alert; these {len(fresh)} rows were already tried against v{current.version} "
            f"(challenger v{tried.challenger_version} was kept: {tried.reason}); waiting for new rows"
        )
        return _finish(options, WatchCycle(**base, **counts, outcome="waiting", reason=reason))
    _post(options, "retrain_started", {**base, **counts})
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    retrain_options = dataclasses.replace(
        options.retrain, out=options.retrain_root / f"{name}-retrain-{stamp}"
    )
    try:
        decision = retrain(name, NewRows(data=files), retrain_options, registry=store)
    except SpecializeError as exc:
        _post(options, "retrain_failed", {**base, "error": str(exc)})
        raise
    cycle = WatchCycle(**base, **counts, outcome=decision.outcome, reason=decision.reason, decision=decision)
    return _finish(options, cycle)


def watch(
    name: str,
    options: WatchOptions,
    every_seconds: float,
    *,
    registry: AdapterRegistry | None = None,
    on_cycle: Callable[[WatchCycle], None] | None = None,
    cycles: int | None = None,
) -> WatchCycle | None:
    """Cycles every `every_seconds` until interrupted (or `cycles` done); the last cycle."""
    last = None
    done = 0
    while cycles is None or done < cycles:
        began = time.monotonic()
        last = watch_once(name, options, registry=registry)
        done += 1
        if on_cycle is not None:
            on_cycle(last)
        if cycles is not None and done >= cycles:
            break
        time.sleep(max(0.0, every_seconds - (time.monotonic() - began)))
    return last


def data_files(folder: Path) -> list[Path]:
    if not folder.is_dir():
        raise ConfigError(f"{folder}: no such folder of new labelled rows")
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix in DATA_SUFFIXES)


def parse_every(text: str) -> float:
    """'90s', '15m', '1h', '1d' (or plain seconds) as seconds."""
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    number, unit = (text[:-1], text[-1]) if text and text[-1] in units else (text, "s")
    try:
        seconds = float(number) * units[unit]
    except ValueError:
        raise ConfigError(f"--every {text!r}: write a duration like 90s, 15m, 1h or 1d") from None
    if seconds <= 0:
        raise ConfigError(f"--every {text!r}: the interval must be positive")
    return seconds


def _drift_config(run_path: Path, options: WatchOptions) -> DriftConfig:
    config = load_drift_config(run_path, options.drift_config)
    if options.window is not None:
        config = config.model_copy(update={"max_window": options.window})
    return config


def _already_tried(store: AdapterRegistry, name: str, version: int, rows: str) -> RetrainDecision | None:
    """The kept decision of a challenger trained on exactly these new rows against `version`."""
    for entry in reversed(store.decisions(name)):
        if entry.current != version or entry.outcome != "kept" or not entry.report:
            continue
        try:
            decision = RetrainDecision.read(Path(entry.report))
        except SpecializeError:
            continue
        if decision.new_rows_sha256 == rows:
            return decision
    return None


def _finish(options: WatchOptions, cycle: WatchCycle) -> WatchCycle:
    """Post the cycle's outcome (when it is a decision) and return it."""
    if cycle.outcome in ("promoted", "kept", "waiting"):
        payload = cycle.model_dump(exclude={"decision"}) | (
            {"decision": cycle.decision.model_dump()} if cycle.decision else {}
        )
        _post(options, cycle.outcome, payload)
    return cycle


def _post(options: WatchOptions, event: str, payload: dict[str, Any]) -> None:
    if options.webhook:
        post_json(options.webhook, {"event": event, **payload})
