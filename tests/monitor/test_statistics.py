"""The drift tests' statistics: exact p-values under the null, for any sizes, and nothing but numpy."""

from __future__ import annotations

import ast
from pathlib import Path

import numpy as np
import pytest

import specialize.monitor.statistics as stats


def test_the_statistics_module_is_pure_numpy():
    tree = ast.parse(Path(stats.__file__).read_text(encoding="utf-8"))
    imported = {
        (node.module if isinstance(node, ast.ImportFrom) else alias.name).split(".")[0]
        for node in ast.walk(tree)
        if isinstance(node, ast.Import | ast.ImportFrom)
        for alias in node.names
    }
    assert imported <= {"__future__", "math", "typing", "numpy"}


def test_identical_samples_give_no_distance_and_p_one():
    rng = np.random.default_rng(0)
    x = rng.integers(0, 5, 40).astype(float)
    z = stats.memberships(rng, 40, 40, 199)
    distance, p = stats.ks_permutation(x, x.copy(), z)
    assert distance == 0.0 and p == 1.0
    assert z.shape == (199, 80) and (z.sum(1) == 40).all()  # each permutation marks 40 as live


def test_p_values_never_reach_zero():
    rng = np.random.default_rng(1)
    z = stats.memberships(rng, 30, 30, 99)
    _, p = stats.ks_permutation(np.zeros(30), np.ones(30), z)
    assert p == pytest.approx(1 / 100)  # the observed labelling counts as one permutation


@pytest.mark.parametrize(("n_labels", "window"), [(3, 30), (120, 30), (12, 400)])
def test_label_test_is_calibrated_for_any_label_count_and_window(n_labels, window):
    """Under the null (live labels drawn from the reference mix) p < 0.05 at most ~5% of the time."""
    rng = np.random.default_rng(n_labels)
    shares = rng.dirichlet(np.ones(n_labels))
    ref = rng.multinomial(1000, shares)
    rejections = 0
    sims = 200
    for _ in range(sims):
        live = rng.multinomial(window, shares)
        _, p = stats.labels_permutation(ref, live, rng, 199)
        rejections += p < 0.05
    assert rejections / sims <= 0.05 + 3 * np.sqrt(0.05 * 0.95 / sims)


def test_shifted_embeddings_are_told_apart():
    rng = np.random.default_rng(2)
    ref = rng.standard_normal((60, 8)).astype(np.float32)
    live = rng.standard_normal((40, 8)).astype(np.float32) + 2.0
    _, p, domain_auc = stats.mmd_permutation(ref, live, stats.memberships(rng, 60, 40, 199))
    assert p == pytest.approx(1 / 200) and domain_auc > 0.95


def test_effect_sizes_and_plot_data():
    assert stats.js_distance(np.array([1.0, 0.0]), np.array([0.0, 1.0])) == pytest.approx(1.0)
    assert stats.js_distance(np.array([0.5, 0.5]), np.array([0.5, 0.5])) == 0.0
    assert stats.auc(np.array([3.0, 4.0]), np.array([1.0, 2.0])) == 1.0
    assert stats.psi(np.arange(100.0), np.arange(100.0)) == pytest.approx(0.0)
    hist = stats.histograms(np.array([0.0, 1.0]), np.array([1.0, 2.0]), bins=2)
    assert hist["edges"] == [0.0, 1.0, 2.0] and sum(hist["ref"]) == sum(hist["live"]) == 2
    assert stats.presence_matrix([[0, 2], []], 3).tolist() == [[1, 0, 1], [0, 0, 0]]
