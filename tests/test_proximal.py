import math

import numpy as np
import pytest
import tensorflow as tf

from keras_lk import prox

CLOSED_FORM_K = (0.5, 2 / 3, 1.0, 1.5, 2.0, 3.0)
ITERATIVE_K = (0.3, 0.8, 1.2, 2.5, 4.0)
STRENGTHS = (0.01, 0.1, 0.5, 1.0)
Y = np.array([-3.0, -1.2, -0.7, -0.3, -0.05, 0.0, 0.02, 0.2, 0.5, 0.9, 1.7,
              4.0])


def brute_force(y, t, k):
    """argmin over a fine grid, refined once around the best point."""
    grid = np.linspace(-abs(y) - 0.01, abs(y) + 0.01, 200_001)
    best = grid[np.argmin(0.5 * (grid - y) ** 2 + t * np.abs(grid) ** k)]
    fine = np.linspace(best - 1e-4, best + 1e-4, 20_001)
    return fine[np.argmin(0.5 * (fine - y) ** 2 + t * np.abs(fine) ** k)]


def threshold(t, k):
    """Largest |y| mapped to 0 (Zuo et al.'s tau; t for k = 1)."""
    if k == 1:
        return t
    base = (2 * t * (1 - k)) ** (1 / (2 - k))
    return base + t * k * base ** (k - 1)


@pytest.mark.parametrize("t", STRENGTHS)
@pytest.mark.parametrize("k", CLOSED_FORM_K + ITERATIVE_K)
def test_prox_matches_brute_force(k, t):
    got = np.asarray(prox(Y, t, k))
    expected = np.array([brute_force(y, t, k) for y in Y])
    np.testing.assert_allclose(got, expected, atol=1e-5)


@pytest.mark.parametrize("k", (0.3, 0.5, 2 / 3, 0.8, 1.0))
@pytest.mark.parametrize("t", STRENGTHS)
def test_exact_zeros_below_the_threshold_and_not_above(k, t):
    tau = threshold(t, k)
    below = np.array([-tau * 0.999, -tau * 0.5, 0.0, tau * 0.3, tau * 0.999])
    above = np.array([-tau * 1.01, tau * 1.01, tau * 3])
    assert np.all(np.asarray(prox(below, t, k)) == 0.0)
    assert np.all(np.asarray(prox(above, t, k)) != 0.0)


@pytest.mark.parametrize("t", STRENGTHS)
def test_half_threshold_is_one_and_a_half_t_to_the_two_thirds(t):
    # The library's threshold for k = 1/2, not this file's helper: |y| just
    # below 1.5 t^(2/3) maps to 0, just above it to a value near 2/3 |y|.
    tau = 1.5 * t ** (2 / 3)
    y = np.array([tau * 0.9999, -tau * 0.9999, tau * 1.0001, -tau * 1.0001])
    got = np.asarray(prox(y, t, 0.5))
    np.testing.assert_array_equal(got[:2], 0.0)
    np.testing.assert_allclose(got[2:], y[2:] * 2 / 3, rtol=1e-3)
    assert threshold(t, 0.5) == pytest.approx(tau)


@pytest.mark.parametrize("k", (0.5, 2 / 3, 1.0, 0.3, 1.5, 3.0))
def test_a_per_element_strength_acts_elementwise(k):
    # `t` of the weight's shape: each element gets its own strength, as
    # if prox ran on it alone.
    rng = np.random.default_rng(7)
    y = rng.standard_normal((3, 4))
    t = rng.uniform(0.01, 1.0, (3, 4))
    got = np.asarray(prox(y, t, k))
    expected = np.array([[float(np.asarray(prox(y[i, j], t[i, j], k)))
                          for j in range(4)] for i in range(3)])
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-9)
    assert np.any(got == 0) == (k <= 1)


@pytest.mark.parametrize("k", (1.2, 1.5, 2.0, 2.5, 3.0, 4.0))
def test_k_above_one_shrinks_but_never_zeros(k):
    y = np.array([-1e-3, 1e-3, 0.5])
    got = np.asarray(prox(y, 1.0, k))
    assert np.all(got != 0) and np.all(np.abs(got) < np.abs(y))
    assert np.all(np.sign(got) == np.sign(y))


def linf_reference(y, t):
    """y - t * projection of y / t on the L1 ball, theta by bisection."""
    v = np.abs(y) / t
    if v.sum() <= 1:
        return np.zeros_like(y)
    lo, hi = 0.0, v.max()
    for _ in range(200):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if np.maximum(v - mid, 0).sum() > 1 else (lo, mid)
    return y - t * np.sign(y) * np.maximum(v - lo, 0)


@pytest.mark.parametrize("t", (0.05, 0.5, 2.0, 100.0))
def test_infinite_k_is_the_l1_ball_projection_form(t):
    y = np.random.default_rng(3).standard_normal((4, 5))
    got = np.asarray(prox(y, t, math.inf))
    np.testing.assert_allclose(got, linf_reference(y, t), atol=1e-6)
    if t < 100:
        objective = 0.5 * np.sum((got - y) ** 2) + t * np.abs(got).max()
        for _ in range(50):
            other = got + 1e-3 * np.random.default_rng(_).standard_normal(y.shape)
            assert objective <= (0.5 * np.sum((other - y) ** 2)
                                 + t * np.abs(other).max()) + 1e-12


@pytest.mark.parametrize("k", CLOSED_FORM_K + ITERATIVE_K + (math.inf,))
def test_zero_strength_is_the_identity_and_float32_is_kept(k):
    y = Y.astype("float32")
    got = prox(y, 0.0, k)
    assert got.dtype == tf.float32
    np.testing.assert_allclose(np.asarray(got), y, rtol=1e-6)


@pytest.mark.parametrize("k", (0.5, 1.0, 0.3, 3.0))
def test_strength_may_be_a_tensor(k):
    t = tf.Variable(0.1)
    np.testing.assert_allclose(np.asarray(prox(Y, t, k)),
                               np.asarray(prox(Y, 0.1, k)), rtol=1e-6)


@pytest.mark.parametrize("k", CLOSED_FORM_K + ITERATIVE_K + (math.inf,))
def test_float32_matches_float64(k):
    got = np.asarray(prox(Y.astype("float32"), 0.1, k))
    np.testing.assert_allclose(got, np.asarray(prox(Y, 0.1, k)), atol=2e-5)


@pytest.mark.parametrize("t", STRENGTHS + (1e-6,))
def test_half_threshold_by_newton_matches_the_closed_form(t):
    from keras_lk.penalties.prox import half_threshold_newton
    tau = threshold(t, 0.5)
    y = np.concatenate([Y, tau * np.array([1.0001, 1.001, 1.01, 1.5, 3.0,
                                           100.0, -1.0001, 0.9999])])
    y = y.astype("float32")
    closed = np.asarray(prox(y, t, 0.5))
    newton = np.asarray(half_threshold_newton(y, t))
    np.testing.assert_array_equal(newton == 0, closed == 0)
    nonzero = closed != 0
    np.testing.assert_allclose(newton[nonzero], closed[nonzero], rtol=1e-6)


def hard_threshold_reference(y, t):
    """argmin_x 1/2 (x - y)^2 + t [x != 0] by comparing the two candidates
    (x = 0 costs y^2 / 2, x = y costs t); ties go to 0."""
    y = np.asarray(y, "float64")
    return np.where(0.5 * y ** 2 > t, y, 0.0)


@pytest.mark.parametrize("t", STRENGTHS + (0.0, 2.0))
def test_k_zero_is_hard_thresholding(t):
    rng = np.random.default_rng(5)
    y = np.concatenate([Y, rng.standard_normal(200) * 2,
                        [math.sqrt(2 * t), -math.sqrt(2 * t)]])
    got = np.asarray(prox(y, t, 0))
    np.testing.assert_array_equal(got, hard_threshold_reference(y, t))
    # Kept weights are not shrunk at all; the threshold is sqrt(2t).
    kept = got != 0
    np.testing.assert_array_equal(got[kept], y[kept])
    assert np.all(np.abs(y[~kept]) <= math.sqrt(2 * t) + 1e-12)
    # And it is the minimizer of the objective, elementwise.
    objective = 0.5 * (got - y) ** 2 + t * (got != 0)
    assert np.all(objective <= 0.5 * y ** 2 + 1e-12)
    assert np.all(objective <= t + 1e-12)
