"""`prune_units`: one-shot structured pruning by magnitude."""

import math
import numbers

import numpy as np

from keras_lk.core import checks
from keras_lk.structure.groups import build_groups
from keras_lk.structure.analysis import analyze

SCORES = {"l1": 1, "l2": 2}


def kept_count(size, fraction, round_to=None):
    """How many of `size` units stay when `fraction` of them go, rounded up
    to a multiple of `round_to` (never more than `size`, never 0)."""
    keep = size - math.floor(size * fraction + 1e-9)
    if round_to:
        keep = math.ceil(keep / round_to) * round_to
    return max(1, min(size, keep))


def zero_units(analysis, root, units):
    """Sets every counted slice of `units` of space `root` to zero."""
    units = np.asarray(sorted(units))
    if not len(units):
        return
    updates = {}
    for piece in analysis.slices_of(root):
        if not piece.counted:
            continue
        rows = piece.indices[np.isin(piece.units, units)].ravel()
        if not len(rows):
            continue
        key = id(piece.variable)
        if key not in updates:
            updates[key] = (piece.variable, np.array(piece.variable.numpy()))
        value = np.moveaxis(updates[key][1], piece.axis, 0)
        value[rows] = 0
    for variable, value in updates.values():
        variable.assign(value)


def prune_units(model, fraction, score="l2", round_to=None):
    """Zeroes the lowest-scoring `fraction` of the units of every removable
    group, in place: one-shot structured pruning by magnitude.

    Uniform per group, as Torch-Pruning's MagnitudePruner: each group of
    `unit_groups(model)` that is removable loses the same fraction of its
    units, those with the smallest norm over all their slices. Every slice
    of a removed unit is set to exactly zero, so `shrink` then removes it
    and the outputs stay the same.

    Args:
        model: A built Functional or Sequential `keras.Model`.
        fraction: The fraction of each group's units to zero, in [0, 1).
        score: "l2" (the default) or "l1": the norm that ranks the units.
        round_to: When set, the number of units kept in each group is
            rounded up to a multiple of it (8 suits most hardware).

    Returns:
        A dict from group name to the sorted tuple of units zeroed.

    Examples:

        >>> import keras, keras_lk
        >>> inputs = keras.Input((8,))
        >>> hidden = keras.layers.Dense(16, "relu", name="hidden")(inputs)
        >>> model = keras.Model(inputs, keras.layers.Dense(2)(hidden))
        >>> removed = keras_lk.prune_units(model, 0.5)
        >>> len(removed["hidden"])
        8
        >>> keras_lk.shrink(model).get_layer("hidden").units
        8
    """
    fraction = checks.check_real(
        "fraction", fraction, minimum=0.0,
        expected="a fraction in [0, 1)")
    if fraction >= 1:
        raise checks.invalid("fraction", "a fraction in [0, 1)",
                                  fraction)
    if score not in SCORES:
        raise checks.invalid("score", f"one of {sorted(SCORES)}", score)
    if round_to is not None and (
            isinstance(round_to, bool)
            or not isinstance(round_to, numbers.Integral) or round_to < 1):
        raise checks.invalid("round_to", "a positive integer or None",
                                  round_to)
    analysis = analyze(model)
    # Every score is read from the weights as they were, then the units go.
    chosen = {}
    for group in build_groups(analysis):
        if not group.removable:
            continue
        keep = kept_count(group.size, fraction, round_to)
        units = ()
        if keep < group.size:
            order = np.argsort(group.norms(SCORES[score]), kind="stable")
            units = tuple(sorted(int(u) for u in order[: group.size - keep]))
        chosen[group.name] = (group, units)
    for group, units in chosen.values():
        zero_units(analysis, group._root, units)
    return {name: units for name, (_, units) in chosen.items()}
