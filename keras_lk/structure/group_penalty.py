"""Group-Lk penalties over unit groups: `alpha * sum_g ||w_g||_2^k`.

A unit's weights live in several variables (the producer's kernel column
and bias, the BatchNormalization's scale and offset, the consumers' kernel
rows), so the penalty is put on each of them as a `GroupLkRegularizer`
that records which positions, along which axis, belong to which unit of
which group. The records are in the layers' configs, so the penalty saves
and loads with the model, and `ProximalOptimizer` reassembles the groups
from the variables it trains (`UnitPlan`), with no model at hand.
"""

import dataclasses

import keras
import numpy as np
from keras import ops

from keras_lk import _validation, backend
from keras_lk.penalties import lk_penalty
from keras_lk.regularizers import REDUCTIONS, proximal_guard
from keras_lk.structure.analysis import analyze
from keras_lk.structure.group_prox import check_group_k, unit_scales
from keras_lk.structure.groups import build_groups
from keras_lk.wrappers import is_proximal_handled, unwrap


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

    Args:
        k: The exponent, a finite number `>= 0` (`> 0` with
            `proximal=False`: the count of live groups has no gradient).
        alpha: The strength, a finite number `>= 0`.
        reduction: `"sum"` or `"mean"` over the units of each group.
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

    def __init__(self, k=1.0, alpha=0.01, reduction="sum", slices=(),
                 proximal=True):
        self.k = check_group_k(k)
        if not isinstance(proximal, bool):
            raise _validation.invalid("proximal", "True or False", proximal)
        if self.k == 0 and not proximal:
            raise ValueError(
                "A group penalty with k = 0 counts the live groups: its "
                "gradient is 0 everywhere, so it needs proximal=True (block "
                "hard thresholding). Received: k=0, proximal=False")
        self.proximal = proximal
        self.alpha = _validation.check_real(
            "alpha", alpha, minimum=0.0, expected="a finite number >= 0")
        self.reduction = _validation.check_choice(
            "reduction", reduction, REDUCTIONS)
        if not isinstance(slices, (list, tuple)) or not all(
                isinstance(s, dict) and {"group", "size", "axis",
                                         "positions"} <= set(s)
                for s in slices):
            raise _validation.invalid(
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

        def check():
            if not is_proximal_handled(variable, self):
                name = getattr(variable, "path", None)
                raise ValueError(
                    f"The group penalty on weight {name!r} is applied as a "
                    "proximal step, and no keras_lk.ProximalOptimizer "
                    "applies it: without one the units would train "
                    "unregularized. Compile with optimizer=keras_lk."
                    "ProximalOptimizer(your_optimizer).")

        # 0, whose gradient checks that the proximal step is taken (the
        # value reads the group's other variables, so it is added outside).
        x = ops.convert_to_tensor(x)
        guarded = proximal_guard(
            x, lambda x: ops.zeros((), keras.config.floatx()), check)
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


@dataclasses.dataclass
class PlanSlice:
    variable: object
    axis: int
    # Per position along the axis: the unit, or the group's size (none).
    positions: np.ndarray


@dataclasses.dataclass
class PlanGroup:
    name: str
    size: int
    k: float
    alpha: float
    reduction: str
    slices: list

    def strength(self, learning_rate):
        """`t` of the step: `lr * alpha` (sum) or `lr * alpha / size`."""
        scale = self.alpha / self.size if self.reduction == "mean" else (
            self.alpha)
        return ops.cast(learning_rate, "float32") * scale


class UnitPlan:
    """The groups of the variables an optimizer trains, joined from their
    `GroupLkRegularizer` records.

    Create it with `UnitPlan.build(variables)` (None when no variable has
    one). Its steps are pure `keras.ops`: the same on every backend.
    """

    def __init__(self, groups, variables):
        self.groups = groups
        self.variables = variables
        self.owner = {}  # group index -> id of the variable that reports it
        for index, group in enumerate(groups):
            self.owner[index] = id(group.slices[0].variable)

    @classmethod
    def build(cls, variables, proximal=True):
        """The plan of the group penalties with this `proximal` setting
        that `variables` carry, linked to them; None if there are none."""
        found = {}
        order = []
        for variable in variables:
            regularizer = unwrap(getattr(variable, "regularizer", None))
            if not (isinstance(regularizer, GroupLkRegularizer)
                    and regularizer.proximal == proximal):
                continue
            order.append(variable)
            settings = (regularizer.k, regularizer.alpha,
                        regularizer.reduction)
            for record in regularizer.slices:
                name, size = record["group"], int(record["size"])
                positions = np.asarray(record["positions"], "int64")
                axis = int(record["axis"]) % len(variable.shape)
                if positions.shape != (variable.shape[axis],) or (
                        positions.max(initial=-1) >= size):
                    raise ValueError(
                        f"The group penalty on {variable.path!r} does not "
                        f"fit it: group {name!r} ({size} units) gives "
                        f"{positions.shape[0]} positions along axis {axis}, "
                        f"whose length is {variable.shape[axis]}. Was the "
                        "model changed after `attach(..., structure="
                        "'units')`? Attach it again.")
                group = found.get(name)
                if group is None:
                    group = found[name] = PlanGroup(name, size, *settings,
                                                    [])
                elif (group.size, group.k, group.alpha, group.reduction) != (
                        size, *settings):
                    raise ValueError(
                        f"The weights of unit group {name!r} carry "
                        "different group penalties: "
                        f"{(group.size, group.k, group.alpha, group.reduction)}"
                        f" and {(size, *settings)} (size, k, alpha, "
                        "reduction). Attach one penalty to the model with "
                        "attach(..., structure='units').")
                positions = np.where(positions < 0, size, positions)
                group.slices.append(PlanSlice(variable, axis,
                                              positions.astype("int32")))
        if not found:
            return None
        plan = cls(list(found.values()), order)
        for variable in order:
            regularizer = unwrap(variable.regularizer)
            regularizer.plan, regularizer.variable = plan, variable
        return plan

    # The math, on values (tensors), by variable id.
    def norms(self, value_of, groups=None):
        """Each group's unit norms (of `groups`, default all), `[size]`
        float32 tensors."""
        return [ops.sqrt(s) for s in self.squares(value_of, groups)]

    def squares(self, value_of, groups=None):
        """Each group's squared unit norms (of `groups`, default all)."""
        sums = {}
        result = []
        for group in self.groups if groups is None else groups:
            total = None
            for piece in group.slices:
                key = (id(piece.variable), piece.axis)
                if key not in sums:
                    value = ops.cast(value_of(piece.variable), "float32")
                    others = [a for a in range(len(value.shape))
                              if a != piece.axis]
                    squares = ops.square(value)
                    sums[key] = (ops.sum(squares, axis=others) if others
                                 else squares)
                part = ops.segment_sum(
                    sums[key], ops.convert_to_tensor(piece.positions),
                    num_segments=group.size + 1)[:group.size]
                total = part if total is None else total + part
            result.append(total)
        return result

    def scaled(self, scales, value_of):
        """The new value of every variable: each multiplied by its units'
        factors (`scales`: one `[size]` tensor per group) along the axes
        its slices name; exactly 0 where a factor is 0."""
        factors = {}
        for group, scale in zip(self.groups, scales):
            padded = ops.concatenate([ops.cast(scale, "float32"),
                                      ops.ones((1,), "float32")])
            for piece in group.slices:
                along = ops.take(padded, ops.convert_to_tensor(
                    piece.positions))
                rank = len(piece.variable.shape)
                shape = [1] * rank
                shape[piece.axis] = piece.variable.shape[piece.axis]
                along = ops.reshape(along, shape)
                key = id(piece.variable)
                factors[key] = along if key not in factors else (
                    factors[key] * along)
        new = []
        for variable in self.variables:
            value = value_of(variable)
            factor = factors.get(id(variable))
            if factor is None:
                new.append(value)
                continue
            factor = ops.cast(factor, value.dtype)
            new.append(ops.where(ops.equal(factor, 0), ops.zeros_like(value),
                                 value * factor))
        return new

    def step(self, learning_rate, value_of):
        """The new values after every group's proximal step with its own
        strength (no controller)."""
        norms = self.norms(value_of)
        scales = [unit_scales(n, g.strength(learning_rate), g.k)
                  for g, n in zip(self.groups, norms)]
        return self.scaled(scales, value_of)

    def penalty(self, variable, x, gradient=False):
        """The penalty of the groups whose first slice is in `variable`
        (now `x`), the others read from their variables; with `gradient`,
        differentiable in all of them (else a constant)."""
        owned = [i for i, owner in self.owner.items() if owner == id(variable)]
        if not owned:
            return ops.zeros((), keras.config.floatx())

        def value_of(v):
            value = x if v is variable else v.value
            return value if gradient else ops.stop_gradient(value)

        groups = [self.groups[index] for index in owned]
        total = ops.zeros((), "float32")
        for group, squares in zip(groups, self.squares(value_of, groups)):
            # ||w_g||^k = s^(k/2) with s = ||w_g||^2 >= 0: lk_penalty's
            # power has a gradient that is exact for s > 0 and 0 at s = 0
            # (the sqrt of a norm would have an infinite one there).
            total = total + ops.cast(lk_penalty(
                squares, group.k / 2, group.alpha, group.reduction),
                "float32")
        return ops.cast(total, keras.config.floatx())



def unit_records(model, names=None):
    """The slice records of `model`'s removable unit groups, per variable.

    Args:
        model: A built Functional or Sequential model.
        names: None for every removable group, or the group names to take
            (`UnitGroup.name`).

    Returns:
        `(records, chosen, frozen)`: `records` maps `id(variable)` to
        `(variable, [record])`; `chosen` the names of the groups covered;
        `frozen` the names of those left out because a weight they slice
        is not trainable (no optimizer step can zero it).
    """
    analysis = analyze(model)
    groups = [g for g in build_groups(analysis) if g.removable]
    if names is not None:
        known = {g.name for g in groups}
        unknown = [n for n in names if n not in known]
        if unknown:
            raise ValueError(
                f"No removable unit group named {unknown} in model "
                f"{model.name!r}. Removable groups: {sorted(known)}")
        groups = [g for g in groups if g.name in set(names)]
    records, chosen, frozen = {}, [], []
    for group in groups:
        pieces = [p for p in analysis.slices_of(group._root) if p.counted]
        if not all(p.variable.trainable for p in pieces):
            frozen.append(group.name)
            continue
        chosen.append(group.name)
        merged = {}
        for piece in pieces:
            variable = piece.variable
            axis = piece.axis % len(variable.shape)
            key = (id(variable), axis)
            if key not in merged:
                merged[key] = (variable, axis, np.full(
                    variable.shape[axis], -1, "int64"))
            positions = merged[key][2]
            for unit, indices in zip(piece.units, piece.indices):
                positions[np.asarray(indices).ravel()] = int(unit)
        for variable, axis, positions in merged.values():
            records.setdefault(id(variable), (variable, []))[1].append({
                "group": group.name, "size": int(group.size), "axis": axis,
                "positions": positions.tolist()})
    return records, chosen, frozen
