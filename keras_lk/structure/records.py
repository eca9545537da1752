"""The slice records of a model's removable unit groups: what `attach(...,
structure="units")` writes into each variable's `GroupLkRegularizer`."""

import numpy as np

from keras_lk.structure.analysis import analyze
from keras_lk.structure.groups import build_groups


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
