"""`LkRegularizer`: the Keras glue around `penalties.lk_penalty`."""

import math

import keras

from keras_lk import _validation
from keras_lk.penalties import lk_penalty

REDUCTIONS = ("mean", "sum")


@keras.saving.register_keras_serializable(package="keras_lk")
class LkRegularizer(keras.regularizers.Regularizer):
    """A generalized Lk weight penalty for any real `k > 0` and `k = inf`.

    `loss = alpha * mean(|w|^k)` with `reduction="mean"` (the article's
    formula), `loss = alpha * sum(|w|^k)` with `reduction="sum"` (Keras's
    convention: `LkRegularizer(1, a, "sum")` equals `keras.regularizers.L1(a)`
    and `LkRegularizer(2, a, "sum")` equals `keras.regularizers.L2(a)`), and
    `loss = alpha * max|w|` for `k = float("inf")` whatever the reduction.

    Converting alpha between the reductions for a weight of `n` elements:
    `alpha_sum = alpha_mean / n`. With the mean, the per-weight strength is
    `alpha / n`, so the same alpha pulls less on a larger layer.

    The gradient is finite for every k and every weight, zeros included:
    for `k <= 1` it is 0 at `w = 0` (the subgradient), so zero-initialised or
    pruned kernels never turn into NaN. Half-precision weights are penalised
    in float32 and the penalty is returned in `keras.config.floatx()`.

    Args:
        k: The exponent, a real number `> 0` or `float("inf")`. Defaults to
            `2.0`.
        alpha: The penalty's strength, a finite number `>= 0`. Defaults to
            `0.01`.
        reduction: `"mean"` or `"sum"` over the weight's elements. Defaults
            to `"mean"`.

    Example:

    >>> import keras, keras_lk
    >>> layer = keras.layers.Dense(
    ...     4, kernel_regularizer=keras_lk.LkRegularizer(k=0.5, alpha=1e-3))
    >>> reg = keras_lk.LkRegularizer(k=3, alpha=0.1, reduction="sum")
    >>> round(float(reg(keras.ops.convert_to_tensor([[1.0, -2.0]]))), 4)
    0.9
    """

    def __init__(self, k=2.0, alpha=0.01, reduction="mean"):
        self.k = _validation.check_real(
            "k", k, minimum=0.0, strict=True, allow_inf=True,
            expected='a number > 0 or float("inf")')
        self.alpha = _validation.check_real(
            "alpha", alpha, minimum=0.0, expected="a finite number >= 0")
        self.reduction = _validation.check_choice(
            "reduction", reduction, REDUCTIONS)

    def __call__(self, x):
        return lk_penalty(x, self.k, self.alpha, self.reduction)

    def get_config(self):
        return {"k": self.k, "alpha": self.alpha, "reduction": self.reduction}

    def __repr__(self):
        k = 'float("inf")' if math.isinf(self.k) else repr(self.k)
        return (f"LkRegularizer(k={k}, alpha={self.alpha!r}, "
                f"reduction={self.reduction!r})")
