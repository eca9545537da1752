"""Group-Lk penalties over unit groups: `alpha * sum_g ||w_g||_2^k`.

A unit's weights live in several variables (the producer's kernel column
and bias, the BatchNormalization's scale and offset, the consumers' kernel
rows), so the penalty is put on each of them as a `GroupLkRegularizer`
that records which positions, along which axis, belong to which unit of
which group. The records are in the layers' configs, so the penalty saves
and loads with the model, and `ProximalOptimizer` reassembles the groups
from the variables it trains (`UnitPlan`), with no model at hand.
"""

import keras
from keras import ops

from keras_lk.core import backend, checks
from keras_lk.penalties.prox import check_group_k
from keras_lk.penalties.regularizers import REDUCTIONS, proximal_guard


@keras.saving.register_keras_serializable(package="keras_lk")
class GroupLkRegularizer(keras.regularizers.Regularizer):
    """One variable's share of a group-Lk penalty (made by `attach`).

    `attach(model, LkRegularizer(k, alpha, reduction, proximal=True),
    structure="units")` puts one on every variable that a removable unit
    group slices. Each records, per group it belongs to, the axis and, for
    every position along it, the unit (or -1). `ProximalOptimizer` joins
    the records of all its variables into the groups and takes the group
    proximal step. The penalty's value enters the loss through the
    variable holding each group's first slice (the producer's kernel), so
    `RegularizationShare` reports it under that layer.

    With `proximal=True` its gradient is 0 (the proximal step applies it).
    With `proximal=False` it is an ordinary penalty for any optimizer: the
    variable holding a group's first slice reads the group's other slices,
    so the gradient reaches every weight of the group. It is
    `k * s^(k/2 - 1) * w` with `s = ||w_g||^2`, exact where `s > 0` and 0 at
    `w_g = 0`, never NaN. The variables of a group are linked by `attach`
    and the links are not saved: after loading a model, call `attach` again
    before training or evaluating it (the penalty raises until then).

    `attach` makes these from an `LkRegularizer` and copies its k, alpha,
    reduction and proximal. Two defaults differ from `LkRegularizer`'s, on
    purpose: k = 1 (the group lasso: a group penalty is there to zero
    units, and k = 2 zeroes none), and proximal=True (files saved before
    the gradient mode existed carry no `proximal` and were proximal).

    Args:
        k: The exponent, a finite number `>= 0` (`> 0` with
            `proximal=False`: the count of live groups has no gradient).
        alpha: The strength, a finite number `>= 0`.
        reduction: `"mean"` or `"sum"` over the units of each group.
            Defaults to `"mean"`, as `LkRegularizer`.
        slices: A list of dicts `{"group": name, "size": units in the
            group, "axis": int, "positions": [unit or -1 per position]}`.
        proximal: Whether `ProximalOptimizer` applies the penalty as a
            group proximal step (exact zeros) instead of a gradient.
            Defaults to True.

    Examples:

        >>> import keras, keras_lk
        >>> model = keras.Sequential([keras.Input((4,)),
        ...     keras.layers.Dense(3, name="hidden"), keras.layers.Dense(1)])
        >>> _ = keras_lk.attach(model, keras_lk.LkRegularizer(
        ...     k=1, alpha=0.1, proximal=True), structure="units")
        >>> regularizer = model.get_layer("hidden").kernel.regularizer
        >>> regularizer.slices[0]["group"], regularizer.slices[0]["axis"]
        ('hidden', 1)
    """

    def __init__(self, k=1.0, alpha=0.01, reduction="mean", slices=(),
                 proximal=True):
        self.k = check_group_k(k)
        if not isinstance(proximal, bool):
            raise checks.invalid("proximal", "True or False", proximal)
        if self.k == 0 and not proximal:
            raise ValueError(
                "A group penalty with k = 0 counts the live groups: its "
                "gradient is 0 everywhere, so it needs proximal=True (block "
                "hard thresholding). Received: k=0, proximal=False")
        self.proximal = proximal
        self.alpha = checks.check_real(
            "alpha", alpha, minimum=0.0, expected="a finite number >= 0")
        self.reduction = checks.check_choice(
            "reduction", reduction, REDUCTIONS)
        if not isinstance(slices, (list, tuple)) or not all(
                isinstance(s, dict) and {"group", "size", "axis",
                                         "positions"} <= set(s)
                for s in slices):
            raise checks.invalid(
                "slices", "a list of dicts with 'group', 'size', 'axis' and "
                "'positions'", slices)
        self.slices = [dict(s) for s in slices]
        # Set by the UnitPlan that takes this variable's steps (in memory).
        self.plan = None
        self.variable = None

    def __call__(self, x):
        plan, variable = self.plan, self.variable
        if not self.proximal:
            if plan is None or variable is None:
                raise ValueError(
                    f"{self!r} reads the weights of its whole unit group, "
                    "and they are not linked (they are linked by attach, "
                    "not saved: this is a model loaded from a file). Attach "
                    "the penalty "
                    "again (keras_lk.attach(model, LkRegularizer(k, alpha, "
                    "reduction), structure='units')) before training or "
                    "evaluating.")
            return plan.penalty(variable, x, gradient=True)
        backend.require_training(
            f"{self!r} (applied by keras_lk.ProximalOptimizer)")

        # 0, whose gradient checks that the proximal step is taken (the
        # value reads the group's other variables, so it is added outside).
        x = ops.convert_to_tensor(x)
        guarded = proximal_guard(
            x, lambda x: ops.zeros((), keras.config.floatx()), self,
            variable, "the units")
        if plan is None or variable is None:
            return guarded
        # The proximal step applies the penalty: its value has no gradient.
        return guarded + ops.stop_gradient(plan.penalty(variable, x))

    def get_config(self):
        return {"k": self.k, "alpha": self.alpha, "reduction": self.reduction,
                "slices": self.slices, "proximal": self.proximal}

    def __repr__(self):
        groups = sorted({s["group"] for s in self.slices})
        proximal = "" if self.proximal else ", proximal=False"
        return (f"GroupLkRegularizer(k={self.k!r}, alpha={self.alpha!r}, "
                f"reduction={self.reduction!r}{proximal}, groups={groups})")
