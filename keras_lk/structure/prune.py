"""`prune_units`: one-shot structured pruning, by any score of
`scores.py`."""

import math
import numbers

import numpy as np

from keras_lk.core import checks
from keras_lk.structure import scores
from keras_lk.structure.analysis import analyze
from keras_lk.structure.groups import build_groups
from keras_lk.structure.scores import SCORES


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


ALLOCATIONS = ("uniform", "global")


def prune_units(model, fraction, score="l2", round_to=None, data=None,
                allocation="uniform", blocks=0.0):
    """Zeroes the lowest-scoring `fraction` of the units of every removable
    group, in place: one-shot structured pruning.

    With `allocation="uniform"` (the default, as Torch-Pruning's
    MagnitudePruner) each removable group of `unit_groups(model)` loses the
    same fraction of its units, those with the lowest score; with
    "global", one ranking across all groups removes `fraction` of all their
    units (use a score comparable across groups: "lamp", "taylor" or
    "activation"). Every slice of a removed unit is set to exactly zero, so
    `shrink` then removes it and the outputs stay the same. Whole blocks
    (keras_hub's Transformer blocks) go only when `blocks` asks.

    Args:
        model: A built Functional or Sequential `keras.Model`.
        fraction: The fraction of each group's units to zero, in [0, 1).
        score: How units are ranked (lowest first): "l2" (the default),
            "l1" or "lamp" from the weights; "taylor" (|sum of w * dL/dw|
            over a unit, through the loss the model was compiled with) or
            "activation" (output activation norm times outgoing weight
            norm) from `data`.
        round_to: When set, the number of units kept in each group is
            rounded up to a multiple of it (8 suits most hardware).
        data: The batches the data scores read: what `model(...)` takes
            (a dict for keras_hub), an `(x, y)` pair for "taylor", or a
            `tf.data.Dataset` / `keras.utils.PyDataset` of them. Batches
            are read 32 examples at a time; a score keeps one number per
            unit, never the activations.
        allocation: "uniform" or "global".
        blocks: The fraction of whole blocks to remove, in [0, 1): the
            blocks that change their residual stream least on `data`
            (1 - cos(input, output), as ShortGPT), or without data those
            whose output projections have the smallest norm.

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

        With data, by first-order Taylor importance:

        >>> import numpy as np
        >>> model.compile(loss="mse")
        >>> x, y = np.ones((4, 8), "float32"), np.zeros((4, 2), "float32")
        >>> removed = keras_lk.prune_units(model, 0.75, score="taylor",
        ...                                data=(x, y))
        >>> keras_lk.shrink(model).get_layer("hidden").units
        4
    """
    fraction = _fraction("fraction", fraction)
    blocks = _fraction("blocks", blocks)
    if score not in SCORES:
        raise checks.invalid("score", f"one of {sorted(SCORES)}", score)
    if allocation not in ALLOCATIONS:
        raise checks.invalid("allocation", f"one of {list(ALLOCATIONS)}",
                             allocation)
    if round_to is not None and (
            isinstance(round_to, bool)
            or not isinstance(round_to, numbers.Integral) or round_to < 1):
        raise checks.invalid("round_to", "a positive integer or None",
                             round_to)
    scorer = SCORES[score]
    if scorer.data and data is None:
        raise ValueError(
            f"score={score!r} reads data: pass data=" + (
                "(x, y)" if scorer.data == "pairs" else "inputs") +
            " (or a dataset of them). Received: data=None")
    analysis = analyze(model)
    context = scores.Context(model, analysis, data)
    every = build_groups(analysis, blocks=True)
    groups = [g for g in every if g.removable and g.kind != "blocks"]
    # Every score is read from the weights as they were, then units go.
    ranked = scorer(context, groups) if groups else {}
    chosen = _allocate(groups, ranked, fraction, round_to, allocation)
    block_group = next((g for g in every if g.kind == "blocks"), None)
    if blocks and block_group is None:
        raise ValueError(
            f"prune_units(blocks={blocks}) found no blocks that can go whole "
            f"in model {model.name!r}.")
    if blocks and not block_group.removable:
        raise ValueError(
            f"The blocks of model {model.name!r} cannot go whole: "
            f"{block_group.reason}")
    if blocks:
        keep = kept_count(block_group.size, blocks)
        order = np.argsort(_block_scores(context, block_group, data,
                                         scorer.data == "pairs"),
                           kind="stable")
        chosen[block_group.name] = (block_group, tuple(sorted(
            int(u) for u in order[: block_group.size - keep])))
    for group, units in chosen.values():
        zero_units(analysis, group._root, units)
    return {name: units for name, (_, units) in chosen.items()}


def _fraction(name, value):
    value = checks.check_real(name, value, minimum=0.0,
                              expected="a fraction in [0, 1)")
    if value >= 1:
        raise checks.invalid(name, "a fraction in [0, 1)", value)
    return value


def _block_scores(context, group, data, pairs):
    if data is None:
        return group.norms(2)
    return scores.block_influence(context, context.analysis.blocks, pairs)


def _allocate(groups, ranked, fraction, round_to, allocation):
    """`{name: (group, units to zero)}`."""
    chosen = {}
    if allocation == "uniform":
        for group in groups:
            keep = kept_count(group.size, fraction, round_to)
            units = ()
            if keep < group.size:
                order = np.argsort(ranked[group.name], kind="stable")
                units = tuple(sorted(int(u) for u in
                                     order[: group.size - keep]))
            chosen[group.name] = (group, units)
        return chosen
    entries = [(float(value), index, unit)
               for index, group in enumerate(groups)
               for unit, value in enumerate(ranked[group.name])]
    entries.sort()
    total = len(entries)
    count = total - kept_count(total, fraction)
    picked = {g.name: [] for g in groups}
    left = {g.name: g.size for g in groups}
    for value, index, unit in entries:
        if count <= 0:
            break
        name = groups[index].name
        if left[name] <= 1:
            continue  # every group keeps one unit
        picked[name].append(unit)
        left[name] -= 1
        count -= 1
    for group in groups:
        units = picked[group.name]
        if round_to:
            keep = kept_count(group.size, len(units) / group.size, round_to)
            units = sorted(units, key=lambda u: ranked[group.name][u])[
                : group.size - keep]
        chosen[group.name] = (group, tuple(sorted(units)))
    return chosen
