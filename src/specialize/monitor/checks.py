"""The drift checks: which apply to a run's task, what each one tests, and the verdict.

A featurized window of live traffic (`features.LiveFeatures`) is compared with the reference
profile. Every check is a hypothesis test whose p-value is valid for any window size (the tests
themselves are in `statistics.py`):

- input_length, output_length, non_ascii, digits, oov: two-sample Kolmogorov-Smirnov distance
  between the reference sample and the window, p-value by permutation (exact under ties, which
  integer lengths and mostly-zero shares are full of); PSI is reported alongside.
- embedding: MMD with a Gaussian kernel (median bandwidth) on input embeddings, p-value by
  permutation; the effect size is the ROC AUC of a leave-one-out kernel domain classifier
  (0.5: live traffic cannot be told from training data, 1.0: always can).
- labels (classification): Jensen-Shannon divergence of reference vs live label shares, p-value
  by the exact permutation distribution (multivariate hypergeometric), valid for any number of
  labels and any window size. The reference is the fine-tuned model's own outputs on the test
  split when the run has been evaluated: live labels are model outputs too, and a model's output
  mix differs from the true label mix by its own confusions. Otherwise the training labels.
- json_fields (JSON tasks): presence rates of the reference's fields, p-value by permutation.
- invalid_outputs: share of outputs outside the label set or unparseable. Against the evaluated
  model's outputs: one-sided Fisher exact test (invalid share higher live than at evaluation);
  without an evaluation, or with `invalid_baseline` set: one-sided exact binomial test.

Multiple testing: with k checks run, a check warns at p < warn_alpha/k and alerts at
p < alert_alpha/k (Bonferroni), so on unshifted traffic the chance that *any* check alerts is at
most alert_alpha. A check must also exceed a small effect size to fire, so that a very large
window does not alert on a shift too small to matter. Windows smaller than `min_window` get a
"not enough data" answer, never a verdict.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from specialize.config import DriftConfig
from specialize.monitor.embed import decode_array
from specialize.monitor.features import LiveFeatures, ReferenceOutputs, featurize_outputs
from specialize.monitor.statistics import (
    binomial_sf,
    histograms,
    hypergeom_sf,
    js_distance,
    ks_permutation,
    labels_permutation,
    memberships,
    mmd_permutation,
    presence_matrix,
    presence_permutation,
    projection,
    psi,
)
from specialize.records.drift import CheckResult, DriftReport, Level, Overall
from specialize.records.profile import Profile

DEFAULT_INVALID_BASELINE = 0.02
MIN_EVAL_OUTPUTS = 10  # fewer valid evaluated outputs than this: compare labels with training instead
_RANK = {"skipped": -1, "ok": 0, "warn": 1, "alert": 2}
_EVALUATED = "fine-tuned outputs on the test split"

# Check name -> (the profile sample's feature, the LiveFeatures attribute): the KS checks.
_NUMERIC: dict[str, tuple[Literal["input", "output", "non_ascii", "digits", "oov"], str]] = {
    "input_length": ("input", "input_len"),
    "output_length": ("output", "output_len"),
    "non_ascii": ("non_ascii", "non_ascii"),
    "digits": ("digits", "digits"),
    "oov": ("oov", "oov"),
}


# ----------------------------------------------------------------------------------- the plan


def plan_checks(profile: Profile, live: LiveFeatures, min_window: int) -> list[CheckResult]:
    """The checks that apply to this task, each with its sizes; too-small ones carry a note
    (and are skipped)."""
    task = profile.task
    n_ref = int(profile.sample.n)
    n_text = int(live.has_text.sum())
    plan = [CheckResult(name="input_length", test="KS permutation", n_ref=n_ref, n_live=n_text)]
    if task != "classification":  # a label's length says nothing the label check does not
        plan.append(
            CheckResult(
                name="output_length",
                test="KS permutation",
                n_ref=n_ref,
                n_live=int(np.count_nonzero(~np.isnan(live.output_len))),
            )
        )
    plan += [
        CheckResult(name=name, test="KS permutation", n_ref=n_ref, n_live=n_text)
        for name in ("non_ascii", "digits", "oov")
    ]
    plan.append(CheckResult(name="embedding", test="MMD permutation", n_ref=n_ref, n_live=n_text))
    if task == "classification" and profile.labels is not None:
        plan.append(
            CheckResult(
                name="labels",
                test="JS permutation",
                n_ref=int(profile.labels.n),
                n_live=sum(lab is not None for lab in live.labels),
            )
        )
    if task == "json":
        plan.append(
            CheckResult(
                name="json_fields",
                test="presence permutation",
                n_ref=sum(r is not None for r in profile.sample.json_fields or []),
                n_live=sum(r is not None for r in live.json_fields),
            )
        )
    if task in ("classification", "json"):
        plan.append(
            CheckResult(
                name="invalid_outputs",
                test="binomial (one-sided)",
                n_live=int(np.count_nonzero(~np.isnan(live.invalid))),
            )
        )
    for check in plan:
        if check.n_live < min_window:
            check.note = f"{check.n_live} usable requests, {min_window} needed"
        if check.name != "invalid_outputs" and check.n_ref < 2:
            check.note = "too few reference rows"
    return plan


def bonferroni(config: DriftConfig, k: int) -> tuple[float, float]:
    """(warn, alert) p-value thresholds for each of k checks, so that the chance of any check
    firing on unshifted traffic stays within warn_alpha / alert_alpha."""
    return config.warn_alpha / k, config.alert_alpha / k


# ---------------------------------------------------------------------------------- the checks


@dataclass
class _Comparison:
    """What every check of one comparison shares. The random generator is consumed in plan
    order, so a report is reproducible from its seed."""

    profile: Profile
    live: LiveFeatures
    config: DriftConfig
    reference: ReferenceOutputs | None
    plots: bool
    rng: np.random.Generator
    permutations: int
    _z: dict[tuple[int, int], np.ndarray] = field(default_factory=dict)

    def z(self, m: int, n: int) -> np.ndarray:
        """Permutation memberships for m reference and n live items, drawn once per size pair
        (the KS checks on the same rows share them)."""
        if (m, n) not in self._z:
            self._z[(m, n)] = memberships(self.rng, m, n, self.permutations)
        return self._z[(m, n)]


def _numeric(check: CheckResult, c: _Comparison) -> None:
    feature, attribute = _NUMERIC[check.name]
    features = c.profile.sample.features
    if feature in ("input", "output"):
        ref_values = features.lengths(feature, c.live.length_unit)  # type: ignore[arg-type]
    else:
        ref_values = getattr(features, feature)
    ref = np.asarray(ref_values, dtype=np.float64)
    values = getattr(c.live, attribute)
    current = values[~np.isnan(values)]
    check.statistic, check.p_value = ks_permutation(ref, current, c.z(ref.size, current.size))
    check.effect, check.effect_name, check.min_effect = check.statistic, "KS distance", c.config.min_ks
    check.extra = {
        "psi": psi(ref, current),
        "ref_mean": float(ref.mean()),
        "live_mean": float(current.mean()),
    }
    check.plot = histograms(ref, current) if c.plots else {}


def _embedding(check: CheckResult, c: _Comparison) -> None:
    ref = decode_array(c.profile.sample.embeddings)
    current = c.live.embeddings[c.live.has_text]
    check.statistic, check.p_value, check.effect = mmd_permutation(ref, current, c.z(len(ref), len(current)))
    check.effect_name, check.min_effect = "domain AUC", c.config.min_domain_auc
    check.plot = projection(ref, current) if c.plots else {}


def _labels(check: CheckResult, c: _Comparison) -> None:
    assert c.profile.labels is not None  # planned for classification profiles only
    counts = c.profile.labels.counts
    names = list(counts)
    index = {lab: i for i, lab in enumerate(names)}
    ref_counts = np.array([counts[lab] for lab in names], dtype=np.int64)
    source = "training labels"
    if c.reference is not None and c.reference.labels_valid >= MIN_EVAL_OUTPUTS:
        ref_counts = np.bincount(
            [index[lab] for lab in c.reference.labels if lab is not None], minlength=len(names)
        )
        source = _EVALUATED
    check.n_ref = int(ref_counts.sum())
    live_counts = np.bincount([index[lab] for lab in c.live.labels if lab is not None], minlength=len(names))
    check.statistic, check.p_value = labels_permutation(ref_counts, live_counts, c.rng, c.permutations)
    p_ref, p_live = ref_counts / ref_counts.sum(), live_counts / live_counts.sum()
    check.effect, check.effect_name = js_distance(p_ref, p_live), "JS distance"
    check.extra = {"reference": source}
    top = np.argsort(-np.abs(p_live - p_ref))[:15]  # the labels whose share moved most
    check.plot = (
        {
            "labels": [names[i] for i in top],
            "ref": p_ref[top].round(4).tolist(),
            "live": p_live[top].round(4).tolist(),
        }
        if c.plots
        else {}
    )


def _json_fields(check: CheckResult, c: _Comparison) -> None:
    assert c.profile.json_fields is not None  # planned for JSON profiles only
    n_fields = len(c.profile.json_fields.fields)
    ref = presence_matrix([r for r in c.profile.sample.json_fields or [] if r is not None], n_fields)
    current = presence_matrix([r for r in c.live.json_fields if r is not None], n_fields)
    check.statistic, check.p_value, check.effect = presence_permutation(
        ref, current, c.z(len(ref), len(current))
    )
    check.effect_name = "largest presence difference"


def _invalid_outputs(check: CheckResult, c: _Comparison) -> None:
    flags = c.live.invalid[~np.isnan(c.live.invalid)]
    bad, n = int(flags.sum()), int(flags.size)
    check.min_effect, check.effect_name = c.config.min_invalid_excess, "share above reference"
    if c.config.invalid_baseline is None and c.reference is not None and c.reference.invalid.size:
        ref_bad, ref_n = int(c.reference.invalid.sum()), int(c.reference.invalid.size)
        check.test, check.n_ref = "Fisher exact (one-sided)", ref_n
        check.statistic, check.p_value = bad / n, hypergeom_sf(bad, ref_n + n, ref_bad + bad, n)
        check.effect = bad / n - ref_bad / ref_n
        check.extra = {"invalid": bad, "reference": _EVALUATED, "reference_share": ref_bad / ref_n}
    else:
        baseline = c.config.invalid_baseline
        baseline = DEFAULT_INVALID_BASELINE if baseline is None else baseline
        check.statistic, check.p_value = bad / n, binomial_sf(bad, n, baseline)
        check.effect = bad / n - baseline
        check.extra = {"invalid": bad, "reference": "baseline rate", "reference_share": baseline}


_MEASURE: dict[str, Callable[[CheckResult, _Comparison], None]] = {
    **dict.fromkeys(_NUMERIC, _numeric),
    "embedding": _embedding,
    "labels": _labels,
    "json_fields": _json_fields,
    "invalid_outputs": _invalid_outputs,
}


def _level(check: CheckResult, warn: float, alert: float) -> Level:
    big_enough = check.effect is None or check.effect >= check.min_effect
    p = check.p_value if check.p_value is not None else 1.0
    return "alert" if p < alert and big_enough else "warn" if p < warn and big_enough else "ok"


# -------------------------------------------------------------------------------- the driver


def compare(
    profile: Profile,
    live: LiveFeatures,
    config: DriftConfig | None = None,
    *,
    reference_outputs: Sequence[str] | None = None,
    plots: bool = True,
) -> DriftReport:
    """Run every applicable check on a featurized window; see the module docstring.

    `reference_outputs`: the fine-tuned model's outputs on the test split, the reference of the
    label and invalid-output checks when given. `plots=False` leaves out the data behind the
    report's plots (histograms, projections)."""
    config = config or DriftConfig()
    if len(live) > config.max_window:
        live = live.take(np.arange(len(live) - config.max_window, len(live)))
    base = {
        "n_rows": live.n_rows,
        "n_used": len(live),
        "n_errors": live.n_errors,
        "min_window": config.min_window,
        "window": {
            "start": float(live.ts.min()) if len(live) else None,
            "end": float(live.ts.max()) if len(live) else None,
        },
        "task": profile.task,
        "embedder": profile.embedder.name,
        "length_unit": live.length_unit,
        "config": config.model_dump(),
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "run": profile.run,
    }
    if len(live) < config.min_window:
        return DriftReport(
            level="not_enough_data",
            **base,
            message=(
                f"not enough data: {len(live)} usable requests in the window, {config.min_window} needed for a verdict"
            ),
        )

    plan = plan_checks(profile, live, config.min_window)
    active = [c for c in plan if not c.note]
    if not active:
        return DriftReport(
            level="not_enough_data",
            checks=plan,
            **base,
            message="not enough data: no check has enough requests with text (is the log keeping only hashes?)",
        )
    k = len(active)
    warn_thr, alert_thr = bonferroni(config, k)
    comparison = _Comparison(
        profile=profile,
        live=live,
        config=config,
        reference=featurize_outputs(profile, reference_outputs),
        plots=plots,
        rng=np.random.default_rng(config.seed),
        # Enough permutations that the smallest attainable p-value is well below the alert threshold.
        permutations=max(config.permutations, math.ceil(2.0 / alert_thr)),
    )
    for check in active:
        check.warn_threshold, check.alert_threshold = warn_thr, alert_thr
        _MEASURE[check.name](check, comparison)
        check.level = _level(check, warn_thr, alert_thr)

    level: Overall = max((c.level for c in active), key=_RANK.__getitem__)  # type: ignore[assignment]
    fired = [c for c in active if c.level == level and level != "ok"]
    if fired:
        what = ", ".join(f"{c.name} (p={c.p_value:.2g}, {c.effect_name} {c.effect:.2f})" for c in fired)
        message = f"{level}: {what}"
    else:
        message = f"ok: no drift found by {k} checks over {len(live)} requests"
    return DriftReport(
        level=level,
        message=message,
        checks=plan,
        permutations=comparison.permutations,
        correction=f"Bonferroni over {k} checks: warn at p < {warn_thr:.2g}, alert at p < {alert_thr:.2g}",
        **base,
    )
