"""`UnitPlan`: the unit groups of the variables an optimizer trains, joined
again from their `GroupLkRegularizer` records, and the math on them (unit
norms, scaling units, the group proximal step, the penalty's value).
"""

import dataclasses

import keras
import numpy as np
from keras import ops

from keras_lk.core.chain import unwrap
from keras_lk.penalties.group import GroupLkRegularizer
from keras_lk.penalties.math import lk_penalty
from keras_lk.penalties.prox import unit_scales
from keras_lk.penalties.regularizers import proximal_strength


@dataclasses.dataclass
class PenaltySlice:
    variable: object
    axis: int
    # Per position along the axis: the unit, or the group's size (none).
    positions: np.ndarray


@dataclasses.dataclass
class PenaltyGroup:
    name: str
    size: int
    k: float
    alpha: float
    reduction: str
    slices: list

    def strength(self, learning_rate):
        """`t` of the step: `lr * alpha` (sum) or `lr * alpha / size`."""
        return proximal_strength(ops.cast(learning_rate, "float32"),
                                 self.alpha, self.reduction, self.size,
                                 self.k)


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
                    group = found[name] = PenaltyGroup(name, size, *settings,
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
                group.slices.append(PenaltySlice(variable, axis,
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
