"""Has live traffic moved away from the training data? The drift monitor's entry point.

`run_drift` compares a window of logged requests with a run's reference profile and returns a
`DriftReport`: every check a calibrated two-sample test whose p-value is valid for any window
size, Bonferroni-corrected across checks, so that on unshifted traffic the chance that any check
alerts is at most `alert_alpha` (the checks and their tests: `checks.py`). The CLI's
`specialize drift`, the server's GET /v1/adapters/{name}/drift (through `drift_for_adapter`) and
each window of `drift_over_time` all go through it, so they cannot disagree on a verdict.

The pieces: the request log is read by `specialize.serve.request_log.read_window`, texts are
featurized by `features.py` exactly as the profile featurized the training rows (`profile.py`),
the checks are planned and run by `checks.py` on the statistics of `statistics.py`.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from specialize.config import DriftConfig
from specialize.errors import ConfigError
from specialize.monitor.checks import compare
from specialize.monitor.embed import Embedder
from specialize.monitor.features import LiveFeatures, featurize
from specialize.monitor.profile import load_profile
from specialize.records.drift import DriftReport, DriftWindow
from specialize.records.profile import Profile

if TYPE_CHECKING:
    from specialize.serve.request_log import LoggedRequest

# Requests read for the drift-over-time series: the latest report tests only `max_window` of
# them, the time plot spreads all of them over `time_windows` windows.
OVER_TIME_HISTORY = 20_000


def run_drift(
    profile: Profile | str | Path,
    traffic: LiveFeatures | Sequence[LoggedRequest] | str | Path,
    config: DriftConfig | None = None,
    *,
    adapter: str | None = None,
    since: str | float | None = None,
    reference_outputs: Sequence[str] | None = None,
    tokenizer: Any = None,
    embedder: Embedder | None = None,
    over_time: bool = False,
    plots: bool = True,
) -> DriftReport:
    """The drift report of a window of traffic: its most recent `config.max_window` requests,
    and with `over_time` the checks over consecutive windows of all of it (`drift_over_time`).

    `profile`: the reference, or where it is (a run directory, its adapter directory, or the
    profile.json file); from a run, its `monitor:` settings are the default `config` and its
    evaluated outputs the default `reference_outputs`. `traffic`: the request log's path (its
    requests to `adapter` since `since`: up to `config.max_window` of them, or the last
    `OVER_TIME_HISTORY` with `over_time`), rows already read from it, or rows featurized.
    `reference_outputs`: the fine-tuned model's outputs on the test split, the reference of the
    output checks. `tokenizer` counts lengths in tokens when the profile does; `embedder`
    overrides the one the profile names; `adapter` also names the report's traffic.
    `plots=False` leaves out the data behind drift.html's plots."""
    if not isinstance(profile, Profile):
        root = _run_root(Path(profile))
        profile = load_profile(profile)
        if root is not None:
            config = config or load_drift_config(root)
            reference_outputs = (
                reference_outputs if reference_outputs is not None else evaluated_outputs(root)
            )
    config = config or DriftConfig()
    if isinstance(traffic, str | Path):
        # Imported here: importing the serve package loads the whole server (torch included),
        # which nothing else in the monitor needs.
        from specialize.serve.request_log import read_window

        limit = OVER_TIME_HISTORY if over_time else config.max_window
        traffic = read_window(traffic, adapter=adapter, since=since, limit=limit)
    # Featurized once: the report and the time series read the same rows, and embedding them
    # is the costly part.
    live = (
        traffic
        if isinstance(traffic, LiveFeatures)
        else featurize(traffic, profile, tokenizer=tokenizer, embedder=embedder)
    )
    report = compare(profile, live, config, reference_outputs=reference_outputs, plots=plots)
    report.adapter = adapter
    if over_time:
        report.over_time = drift_over_time(profile, live, config, reference_outputs=reference_outputs)
    return report


def _run_root(path: Path) -> Path | None:
    """The run directory of a profile location (the run, its adapter directory, or the file)."""
    root = path if (path / "profile.json").is_file() else path.parent
    return root if root.is_dir() else None


def drift_over_time(
    profile: Profile,
    traffic: LiveFeatures | Sequence[LoggedRequest],
    config: DriftConfig | None = None,
    *,
    n_windows: int | None = None,
    reference_outputs: Sequence[str] | None = None,
) -> list[DriftWindow]:
    """The checks over consecutive windows of traffic (oldest first), each at least `min_window`
    requests: what the time plot shows. A short tail joins the window before it."""
    config = config or DriftConfig()
    live = traffic if isinstance(traffic, LiveFeatures) else featurize(traffic, profile)
    order = np.argsort(live.ts, kind="stable")
    size = max(config.min_window, math.ceil(len(live) / (n_windows or config.time_windows)))
    starts = list(range(0, len(live), size))
    if len(starts) > 1 and len(live) - starts[-1] < config.min_window:
        starts.pop()
    windows = []
    for i, start in enumerate(starts):
        stop = starts[i + 1] if i + 1 < len(starts) else len(live)
        part = live.take(order[start:stop])
        part.n_rows, part.n_errors = len(part), 0
        report = run_drift(profile, part, config, reference_outputs=reference_outputs, plots=False)
        windows.append(DriftWindow.of(report, n=len(part)))
    return windows


def load_drift_config(run_dir: str | Path | None = None, path: str | Path | None = None) -> DriftConfig:
    """DriftConfig from a YAML file (its keys, or a run config's `monitor:` section), else from the
    run's config.yaml `monitor:` section, else the defaults."""
    import yaml
    from pydantic import ValidationError

    sources = [Path(path)] if path is not None else []
    if run_dir is not None:
        sources.append(Path(run_dir) / "config.yaml")
    for source in sources:
        if not source.is_file():
            if path is not None and source == Path(path):
                raise ConfigError(f"{source}: drift config not found")
            continue
        try:
            data = yaml.safe_load(source.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"{source}: not valid YAML: {exc}") from None
        if not isinstance(data, dict):
            raise ConfigError(f"{source}: expected a mapping of drift settings")
        section = data.get("monitor", data if source == Path(path or "") else None)
        if section is None:
            continue
        try:
            return DriftConfig.model_validate(section)
        except ValidationError as exc:
            lines = [f"  {'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors()]
            raise ConfigError(f"{source}: invalid drift settings\n" + "\n".join(lines)) from None
    return DriftConfig()


def evaluated_outputs(run_dir: str | Path) -> list[str] | None:
    """The fine-tuned model's outputs on the test split, if the run was evaluated (else None:
    the output checks then compare with the training labels or a baseline rate)."""
    report = Path(run_dir) / "eval" / "report.json"
    try:
        data = json.loads(report.read_text(encoding="utf-8"))
        tuned = next(c for c in data["contenders"] if c["role"] == "fine-tuned")
        return [str(p) for p in tuned["predictions"]]
    except (OSError, ValueError, KeyError, StopIteration, TypeError):
        return None


def drift_for_adapter(
    run_dir: str | Path,
    log_path: str | Path,
    adapter: str | None,
    window: int = 500,
    *,
    since: str | float | None = None,
    tokenizer: Any = None,
) -> dict[str, Any]:
    """For the server's GET /v1/adapters/{name}/drift: `run_drift` over the last `window`
    requests of `adapter`, as JSON-ready data (`DriftReport.json_data`). `run_dir` is the run, its
    adapter directory, or the profile.json file. CPU-bound for up to a second or two: call it off
    the event loop."""
    config = load_drift_config(_run_root(Path(run_dir))).model_copy(update={"max_window": window})
    report = run_drift(
        run_dir, log_path, config, adapter=adapter, since=since, tokenizer=tokenizer, plots=False
    )
    return report.json_data()
