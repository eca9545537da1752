import math

import numpy as np
import pytest
import tensorflow as tf
from keras import ops

from keras_lk import lk_penalty, safe_abs_pow
from keras_lk.penalties.math import sum_abs_pow

ARTICLE_K = (0.5, 1.0, 1.5, 2.0, 3.0, 10.0)
OTHER_K = (0.1, 0.3, 0.8, 1.2, 2.5, 4.0, 5.0, 7.0, 70.0)
WEIGHTS = np.array([[-1.3, -0.4, 0.0], [0.05, 0.7, 1.1]], dtype="float32")


def numpy_penalty(w, k, alpha, reduction):
    w = np.asarray(w, dtype="float64")
    if math.isinf(k):
        return alpha * np.max(np.abs(w))
    powered = np.abs(w) ** k
    return alpha * (powered.mean() if reduction == "mean" else powered.sum())


def gradient(fn, w):
    w = tf.Variable(w)
    with tf.GradientTape() as tape:
        value = fn(w)
    return value, tape.gradient(value, w).numpy()


@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("k", ARTICLE_K + OTHER_K + (math.inf,))
def test_penalty_matches_numpy(k, reduction):
    value = lk_penalty(WEIGHTS, k, alpha=0.3, reduction=reduction)
    expected = numpy_penalty(WEIGHTS, k, 0.3, reduction)
    np.testing.assert_allclose(float(value), expected, rtol=1e-5)


@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("k", ARTICLE_K + OTHER_K)
def test_gradient_is_analytic_derivative_away_from_zero(k, reduction):
    rng = np.random.default_rng(1)
    w = rng.uniform(0.2, 1.5, size=(4, 5)).astype("float32")
    w *= rng.choice([-1.0, 1.0], size=w.shape).astype("float32")
    _, grad = gradient(lambda v: lk_penalty(v, k, 0.3, reduction), w)
    n = w.size if reduction == "mean" else 1
    w64 = w.astype("float64")
    expected = 0.3 * k * np.abs(w64) ** (k - 1) * np.sign(w64) / n
    np.testing.assert_allclose(grad, expected, rtol=2e-5, atol=1e-30)


@pytest.mark.parametrize("k", ARTICLE_K + OTHER_K)
def test_gradient_at_zero_is_finite_and_zero_for_small_k(k):
    w = np.array([0.0, 0.0, 0.5, -0.5], dtype="float32")
    value, grad = gradient(lambda v: lk_penalty(v, k, 1.0, "sum"), w)
    assert np.isfinite(float(value))
    assert np.all(np.isfinite(grad)), grad
    np.testing.assert_array_equal(grad[:2], [0.0, 0.0])


def test_naive_pow_is_nan_at_zero_which_is_why_safe_abs_pow_exists():
    w = np.zeros(3, dtype="float32")
    _, naive = gradient(lambda v: ops.sum(ops.power(ops.abs(v), 0.5)), w)
    _, safe = gradient(lambda v: ops.sum(safe_abs_pow(v, 0.5)), w)
    assert np.all(np.isnan(naive))
    np.testing.assert_array_equal(safe, np.zeros(3))


@pytest.mark.parametrize("k", ARTICLE_K + OTHER_K)
def test_safe_abs_pow_gradient_matches_upstream_weighting(k):
    w = np.array([-0.7, 0.0, 0.4, 1.3], dtype="float32")
    weights = tf.constant([1.0, 2.0, -3.0, 0.5])
    _, grad = gradient(lambda v: ops.sum(safe_abs_pow(v, k) * weights), w)
    w64 = w.astype("float64")
    with np.errstate(divide="ignore", invalid="ignore"):
        expected = k * np.abs(w64) ** (k - 1) * np.sign(w64) * weights.numpy()
    expected[1] = 0.0
    np.testing.assert_allclose(grad, expected, rtol=2e-5)
    np.testing.assert_allclose(
        safe_abs_pow(w, k), np.abs(w64) ** k, rtol=1e-5)


@pytest.mark.parametrize("k", (0.5, 1.5, 3.0, 2.5))
def test_sum_abs_pow_equals_sum_of_safe_abs_pow(k):
    _, fused = gradient(lambda v: sum_abs_pow(v, k), WEIGHTS)
    _, plain = gradient(lambda v: ops.sum(safe_abs_pow(v, k)), WEIGHTS)
    np.testing.assert_allclose(fused, plain, rtol=1e-6)


def test_infinite_k_is_alpha_times_max_whatever_the_reduction():
    for reduction in ("mean", "sum"):
        assert float(lk_penalty(WEIGHTS, math.inf, 2.0, reduction)) == (
            pytest.approx(2.6))
    _, grad = gradient(lambda v: lk_penalty(v, math.inf, 2.0), WEIGHTS)
    expected = np.zeros_like(WEIGHTS)
    expected[0, 0] = -2.0
    np.testing.assert_allclose(grad, expected)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_half_precision_is_computed_in_float32(dtype):
    # |3.5|^10 = 275854 overflows float16 (max 65504).
    w = tf.constant([3.5, -0.25], dtype=dtype)
    value = lk_penalty(w, 10.0, 1.0, "sum")
    assert value.dtype == tf.float32
    np.testing.assert_allclose(
        float(value), numpy_penalty(w.numpy().astype("float32"), 10, 1, "sum"),
        rtol=1e-5)


def test_empty_weight_has_zero_penalty():
    assert float(lk_penalty(np.zeros((0, 3), "float32"), 0.5, 1.0)) == 0.0
