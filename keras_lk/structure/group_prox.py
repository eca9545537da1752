"""The proximal step of a group penalty `t * ||v||_2^k`, in pure `keras.ops`.

The penalty depends on `v` only through its norm `r = ||v||_2`, so its
proximal step keeps the direction and moves the norm by the scalar step of
`t * r^k` on `r >= 0` (`keras_lk.prox`):

    prox(v) = v / ||v|| * prox_scalar(||v||, t, k)

- k = 1: block soft thresholding, `max(0, 1 - t / ||v||) * v`;
- k = 0: block hard thresholding, `v` if `||v||^2 > 2t`, else 0;
- k = 1/2, 2/3 and any other k: the scalar step's closed form or Newton's
  iteration, applied to the norm.

For k <= 1 every group whose norm is at most the scalar step's zeroing
threshold (`sqrt(2t)`, `1.5 t^(2/3)`, `t`) becomes exactly zero.
"""

import math

from keras import ops

from keras_lk import _validation
from keras_lk.proximal import _as_float, _strength, prox


def check_group_k(k):
    """`k` as a float: any real `k >= 0` (not inf: `max |w_g|` over units
    is not a group norm penalty)."""
    return _validation.check_real(
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
        raise _validation.invalid("t", "a finite number >= 0", t)
    norm = ops.sqrt(ops.sum(ops.square(v)))
    scale = unit_scales(norm, t, k)
    return ops.where(ops.equal(scale, 0), ops.zeros_like(v),
                     v * ops.cast(scale, v.dtype))
