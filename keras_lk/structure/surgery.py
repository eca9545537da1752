"""`shrink`: a smaller Keras model without the units that are all zero."""

import keras
import numpy as np

from keras_lk.core import checks
from keras_lk.structure.analysis import analyze, unit_norms
from keras_lk.structure.groups import build_groups, unknown_reasons

UNKNOWN_LAYERS = ("raise", "keep")


def zero_units_of(analysis, group, values):
    """The units of `group` whose counted slices are all exactly zero.
    `values`: a dict caching each variable's numpy value."""
    norms = unit_norms(analysis, group._root, group.size, np.inf, values)
    return np.flatnonzero(norms == 0)


def removed_units(zero, size):
    """Of a group's `size` units, the `zero` ones `shrink` removes: all,
    except one where all are zero (a layer keeps one unit, all zero)."""
    return set(int(u) for u in (zero[1:] if len(zero) == size else zero))


def dead_units(analysis, groups, unknown_layers="raise"):
    """`{root: set of units}` whose counted slices are all exactly zero, in
    the removable groups. A group a layer keras_lk does not know keeps
    from shrinking, yet with units all zero, raises unless
    `unknown_layers="keep"`."""
    dead, values = {}, {}
    for group in groups:
        zero = zero_units_of(analysis, group, values)
        if not len(zero):
            continue
        if not group.removable:
            blocked = unknown_reasons(group)
            if blocked and unknown_layers == "raise":
                raise ValueError(
                    f"shrink() cannot rebuild unit group '{group.name}': "
                    f"{len(zero)} of its {group.size} units are zero, but "
                    f"{blocked[0]}. Write that part of the model with Keras "
                    "layers, or pass unknown_layers=\"keep\" to keep this "
                    "group's units and shrink the rest.")
            continue
        dead[group._root] = removed_units(zero, group.size)
    return dead


def _removals(analysis, dead):
    """`{id(variable): (variable, {axis: indices})}` to delete."""
    found = {}
    for piece in analysis.spaces.slices:
        units = dead.get(analysis.spaces.root(piece.space))
        if not units:
            continue
        rows = piece.indices[np.isin(piece.units, list(units))].ravel()
        if len(rows):
            entry = found.setdefault(id(piece.variable),
                                     (piece.variable, {}))
            entry[1].setdefault(piece.axis, set()).update(rows.tolist())
    return found


def _edited(serialized, analysis, dead):
    """The serialized model with every layer's unit counts set to what is
    left, and no build or compile state (the shapes change)."""
    _scrub(serialized)
    entries = _entries(serialized, "")
    for edit in analysis.spaces.edits:
        layer = entries[edit.layer]["config"]
        count = analysis.live(edit.channels, dead)
        size = len(edit.channels)
        if count == size:
            continue
        if edit.kind == "count":
            layer[edit.key] = count
        elif edit.kind == "path":
            entry = layer
            for part in edit.key[:-1]:
                entry = entry[part]
            entry[edit.key[-1]] = count
        elif edit.kind == "last":
            layer[edit.key] = tuple(layer[edit.key][:-1]) + (count,)
        else:  # MultiHeadAttention's output_shape
            shape = layer.get(edit.key)
            layer[edit.key] = (tuple(shape[:-1]) + (count,)
                               if isinstance(shape, (list, tuple)) else count)
    return serialized


def _scrub(config):
    """Removes every build state (`build_config`, `build_input_shape`,
    `compile_config`), nested ones too: the shapes change."""
    if isinstance(config, dict):
        for key in ("build_config", "compile_config"):
            config.pop(key, None)
        if "layers" in config and config.get("layers") and (
                config["layers"][0].get("class_name") == "InputLayer"):
            config.pop("build_input_shape", None)
        for value in config.values():
            _scrub(value)
    elif isinstance(config, list):
        for item in config:
            _scrub(item)


def _entries(serialized, scope):
    """`{"outer/inner": serialized layer}` of a model and the models nested
    in it, each stripped of its build state."""
    found = {}
    for entry in serialized["config"]["layers"]:
        name = scope + (entry.get("name") or entry["config"]["name"])
        found[name] = entry
        if entry["class_name"] in ("Functional", "Sequential") and (
                "layers" in entry.get("config", {})):
            found.update(_entries(entry, name + "/"))
    return found


def shrink(model, unknown_layers="raise"):
    """A new, smaller Keras model without every unit whose slices are all
    exactly zero.

    Each removable group of `unit_groups(model)` loses its zero units: the
    layers get fewer units, filters or heads, and the weights are copied
    without the removed slices. The outputs equal `model`'s up to float32
    summation order, and the new model is plain Keras: its `.keras` file
    loads without keras_lk (unless `model` itself holds keras_lk
    regularizers; `strip(model, shrink=True)` removes those too). Layer
    names and settings (initializers, regularizers, constraints, dtype
    policies) are kept. A layer that would lose every unit keeps one, all
    zero. The new model is not compiled.

    Args:
        model: A built Functional or Sequential `keras.Model`.
        unknown_layers: "raise" (the default): a group with zero units that
            a layer keras_lk cannot rebuild holds back raises a ValueError
            naming it. "keep": such units stay, the rest shrinks.

    Returns:
        The new `keras.Model`: Sequential for a Sequential model,
        Functional otherwise (a Functional subclass comes back as a plain
        Functional model with the same layers).

    Examples:

        >>> import keras, keras_lk, numpy as np
        >>> inputs = keras.Input((8,))
        >>> hidden = keras.layers.Dense(16, "relu", name="hidden")(inputs)
        >>> model = keras.Model(inputs, keras.layers.Dense(2)(hidden))
        >>> _ = keras_lk.prune_units(model, 0.75)
        >>> small = keras_lk.shrink(model)
        >>> small.get_layer("hidden").units
        4
        >>> x = np.ones((3, 8), "float32")
        >>> bool(np.allclose(small(x), model(x), atol=1e-6))
        True
    """
    if unknown_layers not in UNKNOWN_LAYERS:
        raise checks.invalid("unknown_layers",
                                  f"one of {list(UNKNOWN_LAYERS)}",
                                  unknown_layers)
    analysis = analyze(model)
    groups = build_groups(analysis)
    dead = dead_units(analysis, groups, unknown_layers)
    graph = analysis.graph
    source = model if (graph.view is model
                       or isinstance(model, keras.Sequential)) else graph.view
    serialized = keras.saving.serialize_keras_object(source)
    serialized = _edited(serialized, analysis, dead)
    try:
        smaller = keras.saving.deserialize_keras_object(serialized)
    except (TypeError, ValueError) as error:
        raise ValueError(
            "shrink() could not rebuild the model from its config with "
            f"fewer units: {error}") from error
    _copy_weights(source, smaller, _removals(analysis, dead))
    return smaller


def _copy_weights(source, smaller, removals):
    for layer in source.layers:
        new = smaller.get_layer(layer.name)
        if len(layer.weights) != len(new.weights):
            raise ValueError(
                f"shrink() rebuilt layer '{layer.name}' with "
                f"{len(new.weights)} variables instead of "
                f"{len(layer.weights)}.")
        for old, variable in zip(layer.weights, new.weights):
            value = np.asarray(old.numpy())
            for axis, rows in removals.get(id(old), (None, {}))[1].items():
                value = np.delete(value, sorted(rows), axis=axis)
            if tuple(value.shape) != tuple(variable.shape):
                raise ValueError(
                    f"shrink() could not rebuild layer '{layer.name}' "
                    f"({type(layer).__name__}): variable '{old.path}' has "
                    f"shape {tuple(variable.shape)} in the new model but "
                    f"{tuple(value.shape)} after removing the zero units.")
            variable.assign(value)
