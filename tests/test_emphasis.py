"""Emphasis densities, derivative magnitudes and the paper's parametrisation."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from dm_tune.emphasis import (
    derivative_magnitude,
    dm_density,
    emphasis_lambda,
    from_paper,
    mode_from_lambda,
    to_paper,
)

GRID = np.linspace(0.0, 1.0, 200_001)


@pytest.mark.parametrize("mode", [0.1, 1 / 3, 0.5, 2 / 3, 0.8])
def test_density_peaks_at_the_emphasis_mode(mode):
    density = dm_density(GRID, mode, 8.0)
    assert GRID[density.argmax()] == pytest.approx(mode, abs=1e-4)


def test_mode_zero_is_decreasing_like_cce_and_variance_zero_is_uniform():
    assert np.all(np.diff(dm_density(GRID, 0.0, 4.0)) <= 0)
    np.testing.assert_array_equal(dm_density(GRID, 0.5, 0.0), 1.0)
    # beta = 0 at every p; at p = 0 and 1 the density is 1 whatever the variance
    assert dm_density([0.0, 1.0], 0.5, 16.0).tolist() == [1.0, 1.0]


def test_closed_form_at_known_points():
    # lambda = 1 (mode 1/2): exp(beta * p * (1 - p)); at p = 1/2 that is exp(beta / 4)
    assert dm_density(0.5, 0.5, 8.0) == pytest.approx(math.exp(2.0))
    # lambda = 2 (mode 2/3): exp(beta * p^2 (1 - p)) at p = 2/3 = exp(beta * 4/27)
    assert dm_density(2 / 3, 2 / 3, 27.0) == pytest.approx(math.exp(4.0))


def test_variance_concentrates_the_density():
    p = np.linspace(0, 1, 1001)
    spreads = []
    for variance in (2.0, 8.0, 16.0):
        weights = dm_density(p, 0.5, variance)
        weights /= weights.sum()
        spreads.append(float(np.sqrt((weights * (p - 0.5) ** 2).sum())))
    assert spreads[0] > spreads[1] > spreads[2]


@pytest.mark.parametrize(
    ("name", "peak"), [("cce", 0.0), ("mae", 0.5), ("mse", 1 / 3), ("gce", 0.7 / 1.7)]
)
def test_derivative_magnitude_peaks_match_design_table(name, peak):
    assert GRID[derivative_magnitude(name, GRID).argmax()] == pytest.approx(peak, abs=1e-4)


def test_derivative_magnitude_formulas():
    p = np.array([0.1, 0.5, 0.9])
    np.testing.assert_allclose(derivative_magnitude("cce", p), 2 * (1 - p))
    np.testing.assert_allclose(derivative_magnitude("mse", p), 4 * p * (1 - p) ** 2)
    np.testing.assert_allclose(derivative_magnitude("gce", p, q=0.5), 2 * np.sqrt(p) * (1 - p))
    np.testing.assert_allclose(
        derivative_magnitude("sce", p, alpha=0.1, beta=1.0),
        2 * (1 - p) * (0.1 + abs(math.log(1e-4)) * p),
    )
    np.testing.assert_allclose(
        derivative_magnitude("taylor", p, order=2), 2 * (1 - p) * (1 - (1 - p) ** 2)
    )
    np.testing.assert_allclose(derivative_magnitude("poly1", p), 2 * (1 - p) * (1 + p))
    # Taylor-CE of a high order approaches CCE; GCE with q -> 0 too
    np.testing.assert_allclose(
        derivative_magnitude("taylor", p, order=200), derivative_magnitude("cce", p), atol=1e-9
    )


@given(st.floats(min_value=0.0, max_value=0.99), st.floats(min_value=-50, max_value=50))
def test_paper_parametrisation_round_trips(mode, variance):
    lam, beta = to_paper(mode, variance)
    back_mode, back_variance = from_paper(lam, beta)
    assert back_mode == pytest.approx(mode, abs=1e-12)
    assert back_variance == variance


def test_paper_reference_points():
    assert mode_from_lambda(0.0) == 0.0
    assert mode_from_lambda(0.5) == pytest.approx(1 / 3)
    assert mode_from_lambda(1.0) == 0.5
    assert mode_from_lambda(2.0) == pytest.approx(2 / 3)
    assert emphasis_lambda(2 / 3) == pytest.approx(2.0)


@pytest.mark.parametrize(
    ("call", "needle"),
    [
        (lambda: dm_density(0.5, 1.0, 1.0), "emphasis_mode"),
        (lambda: dm_density(0.5, 0.5, float("nan")), "emphasis_variance"),
        (lambda: dm_density(1.5, 0.5, 1.0), "p must"),
        (lambda: mode_from_lambda(-1.0), "lambda"),
        (lambda: from_paper(1.0, float("inf")), "beta"),
        (lambda: derivative_magnitude("focal", 0.5), "unknown loss"),
        (lambda: derivative_magnitude("gce", 0.5, q=2.0), "q"),
        (lambda: derivative_magnitude("cce", 0.5, q=0.7), "unknown parameter"),
    ],
)
def test_bad_input_names_the_argument(call, needle):
    with pytest.raises(ValueError, match=needle):
        call()


def test_package_exports_resolve():
    import dm_tune

    for name in dm_tune.__all__:
        assert getattr(dm_tune, name) is not None
    with pytest.raises(AttributeError):
        dm_tune.no_such_name  # noqa: B018
