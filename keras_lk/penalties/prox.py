"""Proximal operators of `t * |x|^k`, in pure `keras.ops`.

`prox(y, t, k) = argmin_x 1/2 (x - y)^2 + t |x|^k`, elementwise for finite k,
over the whole tensor for `k = inf` (`t * max|x|`). Unlike a (sub)gradient
step, the proximal step of a k <= 1 penalty sets weights exactly to zero:
every |y| up to a threshold maps to 0.

| k            | method                                                      |
|--------------|-------------------------------------------------------------|
| 0            | hard threshold: `y` where `y^2 > 2t`, else 0 (`t` per nonzero) |
| 1            | soft threshold `sign(y) max(|y| - t, 0)`                    |
| 1/2          | half thresholding (Xu et al. 2012), closed form             |
| 2/3          | closed form (Cao, Sun, Xu 2013)                             |
| other k < 1  | generalized iterated shrinkage (Zuo et al. 2013): its       |
|              | threshold; the nonzero root by monotone Newton              |
| 3/2, 2, 3    | closed forms, written without dividing by t                 |
| other k > 1  | monotone Newton on `s + t k s^(k-1) = |y|`                  |
| inf          | `y - t * Proj_{L1 ball of radius 1}(y / t)` (Duchi et al.)  |

The group step of `t * ||v||_2^k` (`group_prox`, `unit_scales`) is this
scalar step applied to the group's norm, keeping its direction:
`v / ||v|| * prox(||v||, t, k)`. A group of one weight is the scalar step
itself, since `sign(v) * prox(|v|) = prox(v)`: there is one prox.
"""

import math

import keras
from keras import ops

from keras_lk.core import checks

# Newton from the right on a convex increasing function converges
# monotonically; from s = |y| a dozen steps reach float32 resolution.
NEWTON_STEPS = 12


def _as_float(y):
    y = ops.convert_to_tensor(y)
    if not keras.backend.standardize_dtype(y.dtype).startswith("float"):
        y = ops.cast(y, keras.config.floatx())
    return y


def _strength(t, dtype):
    """`t` in `dtype`; a Python number directly (`cast` would round it to
    float32 first, which moves a float64 threshold)."""
    if isinstance(t, (int, float)):
        return ops.convert_to_tensor(t, dtype)
    return ops.cast(t, dtype)


def soft_threshold(y, t):
    """`sign(y) * max(|y| - t, 0)`: the proximal step of `t * |x|`.

    Written `y - clip(y, -t, t)`: two passes instead of four, and exactly
    +0 (never -0) for every |y| <= t.
    """
    return ops.subtract(y, ops.clip(y, -t, t))


def _half(y, t):
    # Half thresholding, written in as few elementwise passes as it takes
    # (TensorFlow runs one kernel per op on the CPU): with
    # C = (lam / 8) (|y| / 3)^(-3/2), the root is
    # (2/3) y (1 + cos(2 pi / 3 - (2/3) arccos C)), and
    # 2 pi / 3 - (2/3) arccos C = (2/3) arccos(-C). Clamping |y| at the
    # threshold keeps C <= 2^(-1/2) (no clip needed); multiplying by y
    # carries the sign.
    magnitude = ops.abs(y)
    threshold = 1.5 * ops.power(t, 2.0 / 3.0)
    safe = ops.maximum(magnitude, threshold)
    # -C = -(lam / 8) (3 / |y|)^(3/2) = -q^(3/2), q = 3 (lam / 8)^(2/3) / |y|.
    q = (3.0 * ops.power(t / 4.0, 2.0 / 3.0)) / safe
    angle = ops.arccos(-(q * ops.sqrt(q)))
    value = y * ((2.0 / 3.0) * (1.0 + ops.cos((2.0 / 3.0) * angle)))
    return ops.where(ops.greater(magnitude, threshold), value,
                     ops.zeros((), value.dtype))


def half_threshold_newton(y, t, steps=5):
    """Half thresholding (`prox(y, t, 0.5)`) by Newton's method, no arccos.

    The nonzero root is `x = sign(y) u^2`, u the largest root of
    `u^3 - |y| u + t / 2 = 0`. Newton from `u = sqrt|y|`, to the right of
    that root on a convex stretch, converges monotonically; five steps reach
    float32 resolution even at the threshold (relative error < 1e-6 against
    the closed form, tested). It takes more elementwise operations than the
    closed form but only cheap ones, so a compiler that fuses them (XLA)
    runs it in one pass: `ProximalOptimizer` uses it that way.
    """
    y = _as_float(y)
    t = ops.cast(t, y.dtype)
    magnitude = ops.abs(y)
    threshold = 1.5 * ops.power(t, 2.0 / 3.0)
    u = ops.sqrt(magnitude)
    for _ in range(steps):
        u2 = ops.square(u)
        u = u - (u * (u2 - magnitude) + 0.5 * t) / (3.0 * u2 - magnitude)
    return ops.where(ops.greater(magnitude, threshold),
                     ops.sign(y) * ops.square(u), ops.zeros((), y.dtype))


def _two_thirds(y, t):
    magnitude = ops.abs(y)
    lam = 2.0 * t
    threshold = (2.0 / 3.0) * ops.power(3.0 * ops.power(lam, 3.0), 0.25)
    keep = ops.greater(magnitude, threshold)
    safe = ops.where(keep, magnitude, ops.ones_like(magnitude))
    safe_lam = ops.maximum(lam, 1e-30)
    argument = ops.maximum(
        (27.0 / 16.0) * ops.square(safe) * ops.power(safe_lam, -1.5), 1.0)
    phi = ops.arccosh(argument)
    a = (2.0 / math.sqrt(3.0)) * ops.power(safe_lam, 0.25) * ops.sqrt(
        ops.cosh(phi / 3.0))
    root = (a + ops.sqrt(ops.maximum(2.0 * safe / a - ops.square(a),
                                     0.0))) / 2.0
    value = root * ops.square(root)
    value = ops.where(keep, ops.sign(y) * value, ops.zeros_like(y))
    # lam^(-3/2) overflows as t -> 0, where the step is the identity.
    return ops.where(ops.greater(t, 0), value, y)


def _below_one(y, t, k):
    magnitude = ops.abs(y)
    base = ops.power(2.0 * t * (1.0 - k), 1.0 / (2.0 - k))
    threshold = base + t * k * ops.power(ops.maximum(base, 1e-30),
                                         k - 1.0)
    keep = ops.greater(magnitude, threshold)
    safe = ops.where(keep, magnitude, ops.ones_like(magnitude))
    # f(s) = s + t k s^(k-1) - |y| is convex and increasing right of the
    # root we want, and f(|y|) > 0: Newton from s = |y| decreases to it.
    s = safe
    for _ in range(NEWTON_STEPS):
        power = ops.power(s, k - 2.0)  # s^(k-2)
        f = s + t * k * power * s - safe
        slope = 1.0 + t * k * (k - 1.0) * power
        s = s - f / slope
    return ops.where(keep, ops.sign(y) * s, ops.zeros_like(y))


def _above_one(y, t, k):
    magnitude = ops.abs(y)
    if k >= 2.0:
        # f(s) = s + t k s^(k-1) - |y|: convex, increasing, f(|y|) >= 0.
        s = magnitude
        for _ in range(NEWTON_STEPS):
            f = s + t * k * ops.power(s, k - 1.0) - magnitude
            slope = 1.0 + t * k * (k - 1.0) * ops.power(s, k - 2.0)
            s = s - f / slope
    else:
        # In u = s^(k-1): g(u) = u^(1/(k-1)) + t k u - |y| is convex.
        q = 1.0 / (k - 1.0)
        u = ops.power(magnitude, k - 1.0)
        for _ in range(NEWTON_STEPS):
            g = ops.power(u, q) + t * k * u - magnitude
            slope = q * ops.power(u, q - 1.0) + t * k
            u = ops.maximum(u - g / ops.maximum(slope, 1e-30), 0.0)
        s = ops.power(u, q)
    return ops.sign(y) * s


def _linf(y, t):
    """`y - t * Proj_{||.||_1 <= 1}(y / t)`, over the whole tensor."""
    flat = ops.reshape(y, (-1,))
    safe_t = ops.maximum(t, 1e-30)
    v = ops.abs(flat) / safe_t
    # Duchi et al. 2008: theta such that sum(max(|v| - theta, 0)) = 1.
    u = ops.flip(ops.sort(v), axis=0)
    cumulative = ops.cumsum(u)
    n = ops.shape(u)[0]
    index = ops.cast(ops.arange(1, n + 1), u.dtype)
    positive = ops.greater(u - (cumulative - 1.0) / index, 0)
    rho = ops.sum(ops.cast(positive, "int32"))
    rho_index = ops.maximum(rho - 1, 0)
    theta = (ops.take(cumulative, rho_index) - 1.0) / ops.cast(
        ops.maximum(rho, 1), u.dtype)
    inside = ops.less_equal(ops.sum(v), 1.0)
    theta = ops.where(inside, 0.0, ops.maximum(theta, 0.0))
    projected = ops.sign(flat) * ops.relu(v - theta)
    result = flat - safe_t * projected
    result = ops.where(ops.greater(t, 0), result, flat)
    return ops.reshape(result, ops.shape(y))


def hard_threshold(y, t):
    """`prox(y, t, 0)`: keeps `y` where `|y| > sqrt(2 t)`, zero elsewhere.

    The proximal operator of `t * [x != 0]`: keeping `y` costs `t`, zeroing
    it costs `y^2 / 2`, so it keeps `y` when `y^2 / 2 > t` (at equality
    both are minimizers; it zeroes). Kept weights are not shrunk at all:
    with a strength that follows a sparsity schedule, this is magnitude
    pruning.

    Examples:

        >>> import numpy as np
        >>> np.asarray(hard_threshold(np.array([-2.0, 0.5, 1.5]), 1.0)).tolist()
        [-2.0, 0.0, 1.5]
    """
    y = _as_float(y)
    t = _strength(t, y.dtype)
    return ops.where(ops.greater(ops.square(y), 2.0 * t), y,
                     ops.zeros_like(y))


def zeroing_threshold(t, k):
    """The largest `|w|` that `prox(w, t, k)` sets to 0, for `0 <= k <= 1`.

    `(2 - k) / (2 - 2k) * (2 (1 - k) t)^(1 / (2 - k))`: `sqrt(2t)` at
    k = 0, `1.5 t^(2/3)` at k = 1/2, `t` at k = 1. Works on floats and
    tensors.

    Examples:

        >>> round(float(zeroing_threshold(8.0, 0.5)), 6)
        6.0
    """
    k = float(k)
    if not 0.0 <= k <= 1.0:
        raise ValueError(f"zeroing_threshold needs 0 <= k <= 1. Received: "
                         f"k={k}")
    if k == 1.0:
        return t
    return (2.0 - k) / (2.0 - 2.0 * k) * (2.0 * (1.0 - k) * t) ** (
        1.0 / (2.0 - k))


def prox(w, t, k):
    """The proximal step of `t * |x|^k`: `argmin_x 1/2 (x - w)^2 + t |x|^k`.

    Elementwise for finite `k`; for `k = inf` the penalty is `t * max|x|`
    over the whole tensor; for `k = 0` it is `t` times the count of nonzero
    elements (hard thresholding: `|w| > sqrt(2t)` kept as is, the rest 0).
    For `k <= 1` every `|w|` up to a threshold maps to exactly 0 (`sqrt(2t)`
    for `k = 0`, `1.5 t^(2/3)` for `k = 1/2`, `t` for `k = 1`); for `k > 1`
    weights shrink but never reach 0.

    Args:
        w: A tensor.
        t: The step's strength, `>= 0`: a Python float or a scalar tensor
            (e.g. a learning-rate schedule's value times alpha).
        k: A Python float, `k >= 0` or `float("inf")`.

    Returns:
        A tensor of the shape and dtype of `w`.

    Examples:

        >>> import numpy as np
        >>> np.asarray(prox(np.array([-2.0, 0.5, 3.0]), 1.0, 1)).tolist()
        [-1.0, 0.0, 2.0]
    """
    w = _as_float(w)
    t = _strength(t, w.dtype)
    k = float(k)
    if math.isinf(k):
        return _linf(w, t)
    if k == 0.0:
        return hard_threshold(w, t)
    if k == 1.0:
        return soft_threshold(w, t)
    if k == 2.0:
        return w / (1.0 + 2.0 * t)
    if k == 3.0:
        magnitude = ops.abs(w)
        return ops.sign(w) * 2.0 * magnitude / (
            ops.sqrt(1.0 + 12.0 * t * magnitude) + 1.0)
    if k == 1.5:
        # sqrt(s) = u solves u^2 + 1.5 t u - |w| = 0.
        magnitude = ops.abs(w)
        u = 2.0 * magnitude / ops.maximum(
            1.5 * t + ops.sqrt(2.25 * t * t + 4.0 * magnitude), 1e-30)
        return ops.sign(w) * ops.square(u)
    if k == 0.5:
        return _half(w, t)
    if abs(k - 2.0 / 3.0) < 1e-12:
        return _two_thirds(w, t)
    if k < 1.0:
        return _below_one(w, t, k)
    return _above_one(w, t, k)


# The group step: the scalar step applied to the norm of each group (a
# group of one weight is the scalar step itself: sign(v) * prox(|v|) =
# prox(v)).
def check_group_k(k):
    """`k` as a float: any real `k >= 0` (not inf: `max |w_g|` over units
    is not a group norm penalty)."""
    return checks.check_real(
        "k", k, minimum=0.0, expected="a finite number >= 0 (0 counts live "
        "units, 1 is the group lasso)")


def unit_scales(norms, t, k):
    """Per group, the factor its weights are multiplied by: the scalar step
    of the norm over the norm (0 for a zero norm).

    Args:
        norms: A tensor of group norms, `>= 0`.
        t: The step's strength: a float, or a tensor broadcasting against
            `norms`.
        k: The exponent, a float `>= 0`.
    """
    norms = _as_float(norms)
    moved = prox(norms, _strength(t, norms.dtype), k)
    positive = ops.greater(norms, 0)
    safe = ops.where(positive, norms, ops.ones_like(norms))
    return ops.where(positive, moved / safe, ops.zeros_like(norms))


def group_prox(v, t, k):
    """`argmin_x 1/2 ||x - v||^2 + t ||x||_2^k`: the proximal step of a group
    penalty on one group, the whole tensor `v`.

    It keeps the direction of `v` and moves its norm by `keras_lk.prox` of
    the norm: block soft thresholding for `k = 1`, block hard thresholding
    for `k = 0` (keep `v` when `||v||^2 > 2t`), the scalar half thresholding
    for `k = 1/2`. For `k <= 1`, a group whose norm is under the threshold
    becomes exactly zero as a whole. `ProximalOptimizer` takes this step on
    every unit of a model after `attach(..., structure="units")`.

    Args:
        v: A tensor: the group's weights.
        t: The step's strength, `>= 0`: a float or a scalar tensor.
        k: The exponent, a finite number `>= 0`.

    Returns:
        A tensor of the shape and dtype of `v`.

    Examples:

        >>> import numpy as np, keras_lk
        >>> np.asarray(keras_lk.group_prox(np.array([3.0, 4.0]), 1.0, 1)
        ...            ).round(6).tolist()  # norm 5 -> 4, direction kept
        [2.4, 3.2]
        >>> np.asarray(keras_lk.group_prox(np.array([0.3, 0.4]), 1.0, 1)
        ...            ).tolist()  # norm 0.5 <= t: the group is zeroed
        [0.0, 0.0]
    """
    k = check_group_k(k)
    v = _as_float(v)
    if isinstance(t, (int, float)) and not (t >= 0 and math.isfinite(t)):
        raise checks.invalid("t", "a finite number >= 0", t)
    norm = ops.sqrt(ops.sum(ops.square(v)))
    scale = unit_scales(norm, t, k)
    return ops.where(ops.equal(scale, 0), ops.zeros_like(v),
                     v * ops.cast(scale, v.dtype))
