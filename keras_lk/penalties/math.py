"""The math of Lk penalties, in pure `keras.ops` (no layers, no callbacks).

`|w|^k` is evaluated with the cheapest exact form for each k, and, for every
k other than 1 and 2, with a hand-written gradient that reuses the forward
pass:

| k            | value                               | d/dw                   |
|--------------|-------------------------------------|------------------------|
| 1            | `abs(w)` (`w * sign(w)` off TensorFlow) | autodiff (`sign(w)`)   |
| 2            | `square(w)`                         | autodiff (`2w`)        |
| integer >= 3 | `w^2` and its powers, by squaring   | `k * w * |w|^(k-2)`    |
| 1.5          | `|w| * sqrt(|w|)`                   | `1.5 * sign(w) * sqrt|w|` |
| other        | `pow(|w|, k)` (`sqrt` for 0.5)      | `k * sign(w) * |w|^k / max(|w|, tiny)` |

The naive `pow(abs(w), k)` has a NaN gradient at `w = 0` for `k < 1` (an
infinite derivative of the power times the zero derivative of `abs`; for
non-integer `k > 1` autodiff of `|w| * sqrt|w|` meets `0 * inf` too), which
turns a zero-initialised or pruned kernel into NaN after one step. The
hand-written derivatives above are exact wherever `w != 0` and exactly 0 at
`w = 0` (the subgradient for `k <= 1`): `|w|^k` is 0 there, and the divisor
`max(|w|, tiny)` (`tiny`: the smallest normal number of the dtype) is never
0, so the gradient is never NaN or inf. They are also cheaper than autodiff
of the value: one or two elementwise passes instead of four to six.
"""

import math

import keras
import numpy as np
from keras import ops

from keras_lk.core import backend

# Integer powers above this use `pow`: the product chain would be long and
# |w|^k overflows float32 for any |w| > 1 long before.
_MAX_PRODUCT_POWER = 64

_HALF_PRECISION = ("float16", "bfloat16")


def _integer_power(base, exponent):
    """Returns `base ** exponent` for an int `exponent >= 1`, by squaring."""
    result = None
    while exponent:
        if exponent & 1:
            result = base if result is None else ops.multiply(result, base)
        exponent >>= 1
        if exponent:
            base = ops.multiply(base, base)
    return result


def _abs_pow_parts(x, k):
    """Returns `(|x|^k, derivative)` for `k` not 1 or 2.

    `derivative(scale)` returns `scale * d|x|^k/dx`, elementwise, built from
    the tensors of the forward pass; `scale` is folded into the last
    multiplication.
    """
    dtype = keras.backend.standardize_dtype(x.dtype)
    if k.is_integer() and k <= _MAX_PRODUCT_POWER:
        n = int(k)
        square = ops.square(x)
        if n % 2:  # |x|^(n-2) = |x| * (x^2)^((n-3)/2)
            below = ops.abs(x)
            if n > 3:
                below = ops.multiply(below, _integer_power(square, (n - 3) // 2))
        else:  # |x|^(n-2) = (x^2)^((n-2)/2)
            below = _integer_power(square, (n - 2) // 2)
        value = ops.multiply(below, square)

        def derivative(scale):
            return ops.multiply(ops.multiply(x, below), ops.multiply(scale, n))

        return value, derivative

    magnitude = ops.abs(x)
    if k == 1.5:
        root = ops.sqrt(magnitude)
        value = ops.multiply(magnitude, root)

        def derivative(scale):
            return ops.multiply(ops.sign(x), ops.multiply(root, scale * 1.5))

        return value, derivative

    value = ops.sqrt(magnitude) if k == 0.5 else ops.power(magnitude, k)
    tiny = float(np.finfo(dtype).tiny)

    def derivative(scale):
        ratio = ops.divide(value, ops.maximum(magnitude, tiny))
        return ops.multiply(ops.sign(x), ops.multiply(ratio, scale * k))

    return value, derivative


def _grad_fn(grad):
    """Adapts `grad(upstream)` to the signature every backend calls."""

    def backend_grad(*args, upstream=None):
        if upstream is None:
            upstream = args[-1]
        return grad(upstream)

    return backend_grad


def safe_abs_pow(x, k):
    """Elementwise `|x|^k` whose gradient is finite everywhere.

    `safe_abs_pow(x, k) = |x|^k` for real `k > 0`. Its gradient is the exact
    `k |x|^(k-1) sign(x)` wherever `x != 0` and `0` at `x = 0` (the
    subgradient for `k <= 1`), never NaN or inf.

    Why not `ops.power(ops.abs(x), k)`: for `k < 1` the derivative of the
    power is infinite at 0 and the derivative of `abs` there is 0, and
    `inf * 0 = NaN`. Here the derivative is written by hand from the forward
    pass, `|x|^k / max(|x|, tiny)`, which is 0 at `x = 0`.

    Args:
        x: A tensor.
        k: A Python float, `k > 0` and finite.

    Returns:
        A tensor of the shape and dtype of `x`.

    Examples:

        >>> import numpy as np
        >>> np.asarray(safe_abs_pow(np.array([-4.0, 0.0, 9.0]), 0.5)).tolist()
        [2.0, 0.0, 3.0]
    """
    return _abs_pow(x, k, reduce_sum=False)


def sum_abs_pow(x, k):
    """`sum(|x|^k)` over all elements, with the gradient of `safe_abs_pow`.

    The same value and gradient as `ops.sum(safe_abs_pow(x, k))`, one
    elementwise pass cheaper in the backward pass: the scalar upstream
    gradient is folded into the derivative instead of broadcast first.

    Args:
        x: A tensor.
        k: A Python float, `k > 0` and finite.

    Returns:
        A scalar tensor of the dtype of `x`.

    Examples:

        >>> float(sum_abs_pow([3.0, -4.0], 2))
        25.0
    """
    return _abs_pow(x, k, reduce_sum=True)


def _abs_pow(x, k, reduce_sum):
    """`|x|^k`, or its sum, with the hand-written gradient of the table."""
    k = float(k)
    x = ops.convert_to_tensor(x)
    if k in (1.0, 2.0):  # Keras's own L1/L2 ops: autodiff is exact and cheap
        # |x| with the subgradient 0 at 0, as promised.
        value = ops.square(x) if k == 2.0 else backend.current().abs(x)
        return ops.sum(value) if reduce_sum else value
    # A variable read inside a custom gradient would need a backend-specific
    # `variables` argument; `copy` reads it outside (an identity in TF).
    x = ops.copy(x)

    @ops.custom_gradient
    def abs_pow(x):
        value, derivative = _abs_pow_parts(x, k)
        if reduce_sum:
            # The scalar upstream is folded into the derivative's last
            # multiplication instead of being broadcast first.
            return ops.sum(value), _grad_fn(derivative)
        return value, _grad_fn(
            lambda upstream: ops.multiply(upstream, derivative(1.0)))

    return abs_pow(x)


def lk_penalty(x, k, alpha, reduction="mean"):
    """`alpha * mean(|x|^k)` (or the sum), `alpha * max|x|` for `k = inf`.

    For `k = 0` it is `alpha` times the fraction (the number, for "sum") of
    nonzero elements, with gradient 0.

    Computed in float32 when `x` is float16 or bfloat16 (`|x|^10` overflows
    float16 above `|x| ~ 3`) and returned in `keras.config.floatx()`, the
    dtype Keras adds regularization losses in.

    Args:
        x: A tensor of weights.
        k: A Python float, `k >= 0`, or `float("inf")`.
        alpha: A Python float, the penalty's strength.
        reduction: `"mean"` or `"sum"` over the elements of `x`.

    Returns:
        A scalar tensor.

    Examples:

        >>> import numpy as np
        >>> float(lk_penalty(np.array([1.0, -3.0]), k=2, alpha=0.5))
        2.5
    """
    x = ops.convert_to_tensor(x)
    dtype = keras.backend.standardize_dtype(x.dtype)
    if dtype in _HALF_PRECISION:
        x = ops.cast(x, "float32")
    elif not dtype.startswith("float"):
        x = ops.cast(x, keras.config.floatx())
    size = _static_size(x)
    if size == 0:
        return ops.zeros((), dtype=keras.config.floatx())
    if math.isinf(k):
        value = ops.multiply(ops.max(ops.abs(x)), alpha)
    else:
        # k = 0: the number of nonzero weights (piecewise constant, so
        # gradient 0), reduced like any other k.
        total = (ops.sum(ops.cast(ops.not_equal(ops.stop_gradient(x), 0),
                                  x.dtype)) if k == 0 else sum_abs_pow(x, k))
        if reduction == "sum":
            value = ops.multiply(total, alpha)
        elif size is not None:
            value = ops.multiply(total, alpha / size)
        else:
            count = ops.cast(ops.size(x), total.dtype)
            value = ops.multiply(ops.divide(total, count), alpha)
    return ops.cast(value, keras.config.floatx())


def _static_size(x):
    """The number of elements of `x` if its shape is static, else None."""
    size = 1
    for dim in x.shape:
        if dim is None:
            return None
        size *= int(dim)
    return size
