"""`LkRegularizer`: the Keras glue around `penalties.lk_penalty`."""

import math

import keras
from keras import ops

from keras_lk.core import checks, backend
from keras_lk.penalties.math import lk_penalty
from keras_lk.core.handled import is_proximal_handled

REDUCTIONS = ("mean", "sum")


@keras.saving.register_keras_serializable(package="keras_lk")
class LkRegularizer(keras.regularizers.Regularizer):
    """A generalized Lk weight penalty for any real `k > 0`, `inf` and `0`.

    `loss = alpha * mean(|w|^k)` with `reduction="mean"` (the article's
    formula), `loss = alpha * sum(|w|^k)` with `reduction="sum"` (Keras's
    convention: `LkRegularizer(1, a, "sum")` equals `keras.regularizers.L1(a)`
    and `LkRegularizer(2, a, "sum")` equals `keras.regularizers.L2(a)`), and
    `loss = alpha * max|w|` for `k = float("inf")` whatever the reduction.
    `k = 0` (with `proximal=True` only) counts the nonzero weights: `alpha`
    times their fraction (or number, "sum"); its proximal step is hard
    thresholding.

    Converting alpha between the reductions for a weight of `n` elements:
    `alpha_sum = alpha_mean / n`. With the mean, the per-weight strength is
    `alpha / n`, so the same alpha pulls less on a larger layer.

    The gradient is finite for every k and every weight, zeros included:
    for `k <= 1` it is 0 at `w = 0` (the subgradient), so zero-initialised or
    pruned kernels never turn into NaN. Half-precision weights are penalised
    in float32 and the penalty is returned in `keras.config.floatx()`.

    With `proximal=True` the penalty is applied as a proximal step by
    `keras_lk.ProximalOptimizer` after each optimizer step, which sets
    weights exactly to zero for k <= 1 (plain gradient descent only makes
    them oscillate around zero). Its value still enters the loss, so the
    reported loss and `RegularizationShare` stay truthful, but its gradient
    is 0: it is not applied twice. Training a proximal weight with any
    other optimizer raises a ValueError at the first step's gradient.

    Args:
        k: The exponent, a real number `> 0`, `float("inf")`, or `0` with
            `proximal=True`: then the penalty is `alpha` times the fraction
            (or, with "sum", the number) of nonzero weights, and its
            proximal step is hard thresholding. Defaults to `2.0`.
        alpha: The penalty's strength, a finite number `>= 0`. Defaults to
            `0.01`.
        reduction: `"mean"` or `"sum"` over the weight's elements. Defaults
            to `"mean"`.
        proximal: Whether `ProximalOptimizer` applies the penalty as a
            proximal step instead of a gradient. Defaults to False.

    Examples:

        >>> import keras, keras_lk
        >>> layer = keras.layers.Dense(
        ...     4, kernel_regularizer=keras_lk.LkRegularizer(k=0.5, alpha=1e-3))
        >>> reg = keras_lk.LkRegularizer(k=3, alpha=0.1, reduction="sum")
        >>> round(float(reg(keras.ops.convert_to_tensor([[1.0, -2.0]]))), 4)
        0.9
    """

    def __init__(self, k=2.0, alpha=0.01, reduction="mean", proximal=False):
        self.k = checks.check_real(
            "k", k, minimum=0.0, allow_inf=True,
            expected='a number > 0, float("inf"), or 0 with proximal=True')
        self.alpha = checks.check_real(
            "alpha", alpha, minimum=0.0, expected="a finite number >= 0")
        self.reduction = checks.check_choice(
            "reduction", reduction, REDUCTIONS)
        if not isinstance(proximal, bool):
            raise checks.invalid("proximal", "True or False", proximal)
        if self.k == 0 and not proximal:
            raise ValueError(
                "LkRegularizer(k=0) counts nonzero weights, whose gradient is "
                "0 everywhere: as a gradient penalty it would do nothing. "
                "Use it as a proximal step (hard thresholding): "
                "LkRegularizer(k=0, alpha=..., proximal=True) with "
                "keras_lk.ProximalOptimizer. Received: k=0, proximal=False")
        self.proximal = proximal

    def __call__(self, x):
        if not self.proximal:
            return lk_penalty(x, self.k, self.alpha, self.reduction)
        return self._proximal_penalty(x)

    def _proximal_penalty(self, x):
        # Its step is ProximalOptimizer's, on TensorFlow, JAX and PyTorch:
        # on another backend the weight would train silently unregularized.
        backend.require_training(
            f"{self!r} (proximal=True, applied by keras_lk.ProximalOptimizer)")
        variable = x if isinstance(x, keras.Variable) else None
        return proximal_guard(x, lambda x: lk_penalty(
            x, self.k, self.alpha, self.reduction),
            self, variable, "the weight", "or use proximal=False")

    def proximal_strength(self, learning_rate, size):
        """The `t` of the proximal step: `lr * alpha / n` (mean) or `lr * alpha`.

        Args:
            learning_rate: The step's learning rate, a float or tensor.
            size: The number of elements of the weight.
        """
        return proximal_strength(learning_rate, self.alpha, self.reduction,
                                 size, self.k)

    def get_config(self):
        return {"k": self.k, "alpha": self.alpha, "reduction": self.reduction,
                "proximal": self.proximal}

    def __repr__(self):
        k = 'float("inf")' if math.isinf(self.k) else repr(self.k)
        proximal = ", proximal=True" if self.proximal else ""
        return (f"LkRegularizer(k={k}, alpha={self.alpha!r}, "
                f"reduction={self.reduction!r}{proximal})")


def proximal_strength(learning_rate, alpha, reduction, count, k=1.0):
    """The strength `t` of a proximal step, for every penalty of the family:
    `lr * alpha / count` with reduction "mean" (`count`: the weights of a
    weight, or the units of a unit group), `lr * alpha` with "sum" and for
    k = inf (`alpha * max|w|` whatever the reduction)."""
    if reduction == "mean" and not math.isinf(k):
        return learning_rate * (alpha / max(count, 1))
    return learning_rate * alpha


def proximal_guard(x, value_of, penalty, variable, trains, fix=""):
    """`value_of(x)` for a penalty applied as a proximal step: its gradient
    is 0 (the step applies it), and computing it raises a ValueError when
    no `ProximalOptimizer` takes the step of `variable` (or, where the
    weight is not known, of `penalty`): without one, `trains` ("the
    weight", "the units") would train unregularized; `fix` is added to the
    advice. `value_of` may read no variable (TensorFlow's custom gradients
    refuse them)."""
    name = getattr(variable, "path", None)

    def check():
        if not is_proximal_handled(variable, penalty):
            weight = f" on weight {name!r}" if name else ""
            raise ValueError(
                f"{penalty!r}{weight} is applied as a proximal step, and no "
                "keras_lk.ProximalOptimizer applies it: without one "
                f"{trains} would train unregularized. Compile with "
                "optimizer=keras_lk.ProximalOptimizer(your_optimizer)"
                + (f", {fix}." if fix else "."))

    @ops.custom_gradient
    def guarded(x):
        def grad(*args, upstream=None):
            check()
            return backend.current().no_gradient(x)

        return value_of(x), grad

    return guarded(ops.copy(ops.convert_to_tensor(x)))
