"""Drift monitoring: a run's reference profile vs the live traffic in the request log.

`profile.py` builds `profile.json` (what the training data looks like; its typed form is
`specialize.records.profile.Profile`), `drift.py` is the entry point that compares a window of
logged requests with it (`features.py` featurizes the texts, `checks.py` runs the calibrated
two-sample tests of `statistics.py`), `report.py` writes drift.json and drift.html, `webhook.py`
posts the JSON to an alerting endpoint.
"""

from specialize.config import DriftConfig
from specialize.monitor.drift import drift_for_adapter, drift_over_time, load_drift_config, run_drift
from specialize.monitor.profile import build_profile, load_profile, profile_from_examples, write_profile
from specialize.records.drift import CheckResult, DriftReport, DriftWindow

__all__ = [
    "CheckResult",
    "DriftConfig",
    "DriftReport",
    "DriftWindow",
    "build_profile",
    "drift_for_adapter",
    "drift_over_time",
    "load_drift_config",
    "load_profile",
    "profile_from_examples",
    "run_drift",
    "write_profile",
]
