"""Drift monitor calibration on Banking77: false-alarm rate on in-domain traffic, detection power
on shifted traffic, over many seeds.

    python benchmarks/drift_calibration.py                 # 200 seeds, ~3.5 min on 2 idle CPU cores
    python benchmarks/drift_calibration.py --seeds 50 --window 100

Reference: the profile of examples/banking77/train.csv (all 10,003 rows; a 500-row sample,
hashed TF-IDF embedder, word lengths), exactly as `specialize profile` builds it.
For each seed, a window of simulated requests is drawn and `specialize.monitor.checks.compare`
runs every check with the default DriftConfig (alert_alpha 0.01, warn_alpha 0.05, Bonferroni):

- in-domain:      rows of test.csv (held out; outputs = their true labels, as a perfect model).
                  Banking77's test set is label-balanced (40 per intent) while train is not, a
                  real if mild label shift; so the false-alarm rate is measured on test rows drawn
                  with the train label mix ("train mix"), and on test.csv as is for comparison.
- out-of-domain:  non-banking questions written below (outputs: labels drawn at random)
- mixed 30% OOD:  in-domain window with 30% of its requests replaced by out-of-domain ones
- 4x longer:      in-domain requests, each joined with three other in-domain requests

Printed: alert and warn rate per scenario (false-alarm rate for in-domain, power for the
others) with a 95% Wilson interval; the last line is the summary the README quotes.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from specialize.config import DriftConfig  # noqa: E402
from specialize.data.formats import FormatSpec, load_examples  # noqa: E402
from specialize.monitor.checks import compare  # noqa: E402
from specialize.monitor.features import featurize  # noqa: E402
from specialize.monitor.profile import profile_from_examples  # noqa: E402
from specialize.serve.request_log import LoggedRequest  # noqa: E402

# Questions from other domains (cooking, sport, code, travel...), one per line, shared with
# examples/banking77/traffic.py.
OUT_OF_DOMAIN = [
    line
    for line in (ROOT / "examples" / "banking77" / "out_of_domain.txt")
    .read_text(encoding="utf-8")
    .splitlines()
    if line.strip()
]


def wilson(hits: int, n: int) -> tuple[float, float]:
    if n == 0:
        return (math.nan, math.nan)
    z, p = 1.96, hits / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=200)
    parser.add_argument("--window", type=int, default=50, help="requests per window (shifted scenarios)")
    parser.add_argument("--null-windows", default="30,100,300", help="window sizes of the in-domain runs")
    args = parser.parse_args()

    spec = FormatSpec(input_field="text", output_field="category")
    data = ROOT / "examples" / "banking77"
    train, _, _ = load_examples(data / "train.csv", spec)
    test, _, _ = load_examples(data / "test.csv", spec)
    started = time.perf_counter()
    profile = profile_from_examples(train, embedder="hashed")
    labels = list(profile.labels.counts)
    weights = np.array([profile.labels.counts[lab] for lab in labels], dtype=float)
    weights /= weights.sum()
    print(
        f"reference: {len(train)} train rows, sample {profile.sample.n}, embedder "
        f"{profile.embedder.name}, lengths in {profile.length_unit} "
        f"({time.perf_counter() - started:.1f} s)"
    )

    def rows(texts, completions):
        return [
            LoggedRequest(prompt=t, completion=c, ts=float(i), status=200)
            for i, (t, c) in enumerate(zip(texts, completions, strict=True))
        ]

    in_texts = [e.user_text for e in test]
    in_labels = [e.completion for e in test]
    rng = np.random.default_rng(12345)
    ood_labels = list(rng.choice(labels, size=len(OUT_OF_DOMAIN), p=weights))
    live_in = featurize(rows(in_texts, in_labels), profile)
    live_ood = featurize(rows(OUT_OF_DOMAIN, ood_labels), profile)
    joined = [" ".join(in_texts[j] for j in rng.choice(len(in_texts), 4, replace=False)) for _ in range(2000)]
    live_long = featurize(rows(joined, list(rng.choice(in_labels, size=len(joined)))), profile)

    def concat(a, b):
        from dataclasses import fields, replace

        out = {}
        for f in fields(a):
            x, y = getattr(a, f.name), getattr(b, f.name)
            if isinstance(x, np.ndarray):
                out[f.name] = np.concatenate([x, y])
            elif isinstance(x, list):
                out[f.name] = x + y
        return replace(a, **out)

    # Row weights that give test rows the train label mix.
    label_share = dict(zip(labels, weights, strict=True))
    per_label = {lab: in_labels.count(lab) for lab in set(in_labels)}
    row_p = np.array([label_share[lab] / per_label[lab] for lab in in_labels])
    row_p /= row_p.sum()

    def mixed(share: float):
        n_ood = round(share * 2 * args.window)
        return lambda r: concat(
            live_in.take(r.choice(len(live_in), 2 * args.window - n_ood, replace=False, p=row_p)),
            live_ood.take(r.choice(len(live_ood), n_ood, replace=False)),
        )

    scenarios: list[tuple[str, int, object]] = []
    for size in (int(s) for s in args.null_windows.split(",")):
        scenarios.append(
            (
                f"in-domain, train mix, window {size}",
                size,
                lambda r, size=size: live_in.take(r.choice(len(live_in), size, replace=False, p=row_p)),
            )
        )
    for size in (int(s) for s in args.null_windows.split(",")):
        scenarios.append(
            (
                f"in-domain, test.csv as is, window {size}",
                size,
                lambda r, size=size: live_in.take(r.choice(len(live_in), size, replace=False)),
            )
        )
    w = args.window
    scenarios += [
        (
            f"out-of-domain, window {w}",
            w,
            lambda r: live_ood.take(r.choice(len(live_ood), w, replace=w > len(live_ood))),
        ),
        (f"mixed 30% out-of-domain, window {2 * w}", 2 * w, mixed(0.3)),
        (f"mixed 10% out-of-domain, window {2 * w}", 2 * w, mixed(0.1)),
        (
            f"4x longer requests, window {w}",
            w,
            lambda r: live_long.take(r.choice(len(live_long), w, replace=False)),
        ),
    ]
    results = {}
    for name, _, draw in scenarios:
        t0 = time.perf_counter()
        alerts = warns = 0
        for seed in range(args.seeds):
            r = np.random.default_rng(seed)
            report = compare(profile, draw(r), DriftConfig(seed=seed), plots=False)
            alerts += report.level == "alert"
            warns += report.level in ("warn", "alert")
        lo, hi = wilson(alerts, args.seeds)
        results[name] = alerts / args.seeds
        print(
            f"{name:45s} alert {alerts / args.seeds:6.1%} [{lo:.1%}, {hi:.1%}]  "
            f"warn-or-alert {warns / args.seeds:6.1%}  ({time.perf_counter() - t0:.0f} s)"
        )
    null = [v for k, v in results.items() if k.startswith("in-domain, train mix")]
    as_is = [v for k, v in results.items() if k.startswith("in-domain, test.csv")]
    power = [v for k, v in results.items() if not k.startswith("in-domain")]
    print(
        f"summary: {args.seeds} seeds; false-alarm rate (alert on in-domain) max {max(null):.1%} "
        f"(test.csv as is: max {max(as_is):.1%}); detection power: out-of-domain {power[0]:.0%}, "
        f"30% mixed {power[1]:.0%}, 10% mixed {power[2]:.0%}, 4x longer {power[3]:.0%}"
    )


if __name__ == "__main__":
    main()
