"""The learning-curve fit on hand-made curves: exact power laws recovered, predictions and the
rows needed for a target computed by hand, intervals that cover, degenerate inputs."""

from __future__ import annotations

import json

import numpy as np
import pytest

from specialize.evaluate.learning_curve import PowerLaw, fit_power_law, learning_curve

TRUE = PowerLaw(a=0.9, b=-2.0, c=0.5)  # 0.9 - 2 / sqrt(n)
SIZES = [100, 200, 400, 800]


def test_an_exact_power_law_is_recovered():
    law = fit_power_law(SIZES, [TRUE(n) for n in SIZES])
    assert law.a == pytest.approx(0.9, abs=1e-4) and law.b == pytest.approx(-2.0, rel=1e-3)
    assert law.c == pytest.approx(0.5, rel=1e-3)
    # Hand-computed: 0.9 - 2 / sqrt(1600) = 0.85; 0.9 - 2 / sqrt(3200) = 0.86464.
    assert float(law(1600)) == pytest.approx(0.85, abs=1e-4)
    assert float(law(3200)) == pytest.approx(0.9 - 2 / np.sqrt(3200), abs=1e-4)


def test_examples_for_a_target_by_hand():
    # 0.9 - 2 / sqrt(n) = 0.88  =>  sqrt(n) = 100  =>  n = 10,000.
    assert TRUE.examples_for(0.88) == pytest.approx(10_000)
    assert TRUE.examples_for(0.95) is None  # beyond the asymptote
    assert PowerLaw(0.5, 0.0, 1.0).examples_for(0.6) is None  # flat: more data changes nothing


def test_three_points_fit_exactly_and_a_falling_metric_too():
    sizes = [50, 100, 200]
    law = fit_power_law(sizes, [TRUE(n) for n in sizes])
    np.testing.assert_allclose([law(n) for n in sizes], [TRUE(n) for n in sizes], atol=1e-5)
    loss = PowerLaw(a=0.3, b=5.0, c=0.7)  # a loss falls towards its floor
    fitted = fit_power_law(SIZES, [loss(n) for n in SIZES])
    assert fitted.a == pytest.approx(0.3, abs=1e-3) and fitted.b > 0


def test_fit_needs_three_distinct_sizes():
    with pytest.raises(ValueError, match="at least 3 distinct"):
        fit_power_law([100, 100, 200], [0.5, 0.5, 0.6])
    with pytest.raises(ValueError, match="2 sizes for 3 values"):
        fit_power_law([1, 2], [0.1, 0.2, 0.3])


def _per_item(values: list[float], rows: int = 400) -> list[list[float]]:
    """0/1 per-row scores whose mean is each value (the same rows for every subset: nested data
    makes the bigger model right wherever the smaller one was)."""
    return [[1.0 if i < round(v * rows) else 0.0 for i in range(rows)] for v in values]


def test_learning_curve_record_with_intervals():
    values = [TRUE(n) for n in SIZES]
    curve = learning_curve(
        [0.125, 0.25, 0.5, 1.0], SIZES, _per_item(values), metric="accuracy", target=0.88, seed=1
    )
    assert [p.examples for p in curve.points] == SIZES
    assert [p.value for p in curve.points] == pytest.approx(values, abs=1 / 400)
    for point in curve.points:
        assert point.ci95.ci_low <= point.value <= point.ci95.ci_high
    # Rounding the points to whole test rows moves the asymptote a little; the intervals cover the truth.
    assert curve.fit is not None and curve.fit.a == pytest.approx(0.9, abs=0.02)
    assert curve.asymptote.ci_low <= 0.9 <= curve.asymptote.ci_high
    assert curve.at_2x.value == pytest.approx(0.85, abs=0.005)
    assert curve.at_2x.ci_low < 0.85 < curve.at_2x.ci_high
    assert curve.at_4x.value > curve.at_2x.value
    needed = curve.examples_for_target
    assert curve.target_reachable and needed.ci_low < 10_000 < needed.ci_high
    assert needed.value == pytest.approx(10_000, rel=0.5)  # extrapolating 12x beyond the data


def test_saturated_curve_and_unreachable_target():
    curve = learning_curve(
        [0.25, 0.5, 1.0], [100, 200, 400], _per_item([0.8, 0.8, 0.8]), metric="accuracy", target=0.9
    )
    assert curve.at_2x.value == pytest.approx(0.8, abs=1e-6)
    assert curve.target_reachable is False and curve.examples_for_target.value is None


def test_degenerate_inputs():
    two = learning_curve([0.5, 1.0], [100, 200], _per_item([0.5, 0.6]), metric="accuracy")
    assert two.fit is None and "fewer than 3" in two.note and len(two.points) == 2
    with pytest.raises(ValueError, match="same, non-empty test rows"):
        learning_curve([0.5, 1.0], [1, 2], [[1.0], [1.0, 0.0]], metric="accuracy")
    with pytest.raises(ValueError, match="one fraction"):
        learning_curve([0.5], [1, 2], [[1.0], [1.0]], metric="accuracy")


def test_nested_subsets_are_nested_and_seeded():
    from specialize.evaluate.subsets import nested_subsets

    rows = list(range(40))
    small, half, full = nested_subsets(rows, [0.25, 0.5, 1.0], seed=3)
    assert (len(small), len(half), len(full)) == (10, 20, 40)
    assert set(small) <= set(half) <= set(full) == set(rows)
    assert nested_subsets(rows, [0.25], seed=3)[0] == small and nested_subsets(rows, [0.01], seed=3)[0]


def test_learning_curve_table():
    from specialize.evaluate.table import learning_curve_table
    from specialize.records.eval import EvalReport

    values = [TRUE(n) for n in SIZES]
    curve = learning_curve([0.125, 0.25, 0.5, 1.0], SIZES, _per_item(values), metric="accuracy", target=0.88)
    table = learning_curve_table(EvalReport(learning_curve=curve))
    assert [r[0] for r in table.rows] == [
        "100",
        "200",
        "400",
        "800",
        "1,600",
        "3,200",
        "unlimited",
        table.rows[-1][0],
    ]
    assert table.highlight == [False, False, False, True, False, False, False, False]
    assert table.rows[-1][2] == "rows needed for eval.target_metric" and "[" in table.rows[-1][0]
    assert not learning_curve_table(EvalReport())


def test_evaluation_measures_the_learning_curve(tiny_model_dir, tmp_path):
    from tests.evaluate.test_runner import run_cli, write_config

    rows = [
        {"text": f"query {i} about {lab}", "intent": lab} for i in range(60) for lab in [["a", "b"][i % 2]]
    ]
    config = write_config(
        tmp_path,
        tiny_model_dir,
        rows,
        eval_overrides={"learning_curve": [0.25, 0.5], "target_metric": 0.99, "classic_baseline": False},
        input_field="text",
        output_field="intent",
    )
    report, output = run_cli(config, tmp_path / "run")
    curve = report["learning_curve"]
    sizes = [p["examples"] for p in curve["points"]]
    assert [p["fraction"] for p in curve["points"]] == [0.25, 0.5, 1.0]
    assert sizes == sorted(sizes) and sizes[-1] == report["training"]["examples"]
    tuned = next(c for c in report["contenders"] if c["role"] == "fine-tuned")
    assert curve["points"][-1]["value"] == pytest.approx(
        np.mean(tuned["quality"]["per_item"][curve["metric"]])
    )
    assert curve["fit"] is not None and curve["at_2x"]["value"] is not None
    for fraction, size in zip((0.25, 0.5), sizes, strict=False):
        sub = tmp_path / "run" / "learning_curve" / f"fraction-{fraction:g}"
        assert json.loads((sub / "run.json").read_text())["examples"]["train"] == size
    assert "## Learning curve" in (tmp_path / "run" / "eval" / "report.md").read_text()
    assert "Learning curve" in output
