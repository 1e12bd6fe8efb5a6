"""Drift monitoring: a run's reference profile vs the live traffic in the request log.

`profile.py` writes `profile.json` (what the training data looks like), `drift.py` compares a
window of logged requests with it by calibrated two-sample tests, `report.py` writes drift.json
and drift.html, `webhook.py` posts the JSON to an alerting endpoint.
"""

from specialize.monitor.drift import (
    CheckResult,
    DriftConfig,
    DriftReport,
    detect_drift,
    drift_for_adapter,
    drift_over_time,
    read_window,
    run_drift,
)
from specialize.monitor.profile import build_profile, load_profile, profile_from_examples, write_profile

__all__ = [
    "CheckResult",
    "DriftConfig",
    "DriftReport",
    "build_profile",
    "detect_drift",
    "drift_for_adapter",
    "drift_over_time",
    "load_profile",
    "profile_from_examples",
    "read_window",
    "run_drift",
    "write_profile",
]
