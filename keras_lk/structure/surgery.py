"""`shrink`: a smaller Keras model without the units that are all zero."""

import warnings

import keras
import numpy as np

from keras_lk.core import checks
from keras_lk.structure import configs
from keras_lk.structure.analysis import analyze, unit_norms
from keras_lk.structure.configs import set_count
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
        The new `keras.Model`: Sequential for a Sequential model; for a
        Functional subclass built from its constructor arguments (a
        keras_hub backbone or task), an instance of its class when those
        arguments can say the widths left (layers that share a width keep
        the widest, with a warning), else a plain Functional model with
        the same layers (with a warning); Functional otherwise.

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
    if _is_task(model):
        return _shrunk_task(model, unknown_layers)
    analysis = analyze(model)
    groups = build_groups(analysis, blocks=True)
    dead = dead_units(analysis, groups, unknown_layers)
    graph = analysis.graph
    by_class = not (graph.view is model or isinstance(model, keras.Sequential))
    if by_class:
        padded, kept = configs.pad_to_shared(analysis, dead, by_layer=False)
        config = model.get_config()
        refused = _class_says(analysis, padded, config)
        if refused is None:
            return _shrunk_class(model, analysis, padded, kept, config)
        warnings.warn(
            f"shrink() returns a Functional model with the layers of this "
            f"{type(model).__name__}: its constructor arguments cannot say "
            f"the units left in {refused}.", stacklevel=2)
    dead, kept = configs.pad_to_shared(analysis, dead, by_layer=True)
    _warn_kept(kept, type(model).__name__)
    gone = configs.dead_blocks(analysis, dead)
    dropped = {id(v) for block in gone for v in block.weights}
    removals = _removals(analysis, dead)
    source = model if not by_class else graph.view
    try:
        serialized = keras.saving.serialize_keras_object(source)
    except (AttributeError, TypeError, KeyError, NotImplementedError) as err:
        raise ValueError(
            "shrink() could not read the config of a layer of this "
            f"{type(model).__name__} to rebuild it: {err!r}") from err
    serialized = configs.edited(serialized, analysis, dead)
    try:
        smaller = keras.saving.deserialize_keras_object(serialized)
    except (TypeError, ValueError) as error:
        raise ValueError(
            "shrink() could not rebuild the model from its config with "
            f"fewer units: {error}") from error
    _copy_weights(source, smaller, removals, dropped)
    return smaller


def _is_task(model):
    """A keras_hub Task (a CausalLM, a classifier): a model with a
    `backbone` model inside and constructor arguments for a config."""
    backbone = getattr(type(model), "backbone", None)
    return (isinstance(backbone, property)
            and isinstance(getattr(model, "backbone", None), keras.Model)
            and model.backbone is not model)


def _shrunk_task(model, unknown_layers):
    """The task rebuilt around its shrunk backbone; its own weights (a
    classifier's head) are copied as they are."""
    backbone = model.backbone
    small = shrink(backbone, unknown_layers)
    if not isinstance(small, type(backbone)):
        raise ValueError(
            f"shrink() could not keep the {type(backbone).__name__} of this "
            f"{type(model).__name__} of its class; shrink model.backbone "
            "for a Functional model.")
    config = model.get_config()
    config["backbone"] = small
    try:
        smaller = type(model).from_config(config)
    except (TypeError, ValueError) as error:
        raise ValueError(
            f"shrink() could not rebuild the {type(model).__name__} around "
            f"its shrunk backbone: {error}") from error
    inside = {id(v) for v in backbone.weights}
    inside_new = {id(v) for v in small.weights}
    _copy_in_order([v for v in model.weights if id(v) not in inside],
                   [v for v in smaller.weights if id(v) not in inside_new],
                   {}, set(), type(model).__name__)
    return smaller


def _warn_kept(kept, what):
    if kept:
        warnings.warn(
            f"shrink() kept {kept} zero units so that the layers that share "
            f"a width in {what} keep one width (the widest of them); prune "
            "every block alike (keras_lk.prune_units, allocation="
            "\"uniform\") to lose them all.", stacklevel=3)


def _class_says(analysis, dead, config):
    """None when the constructor arguments `config` of a Functional
    subclass can say every width that is left (keras_hub's backbones:
    `intermediate_dim`, the head counts, `num_layers`), else why not."""
    for edit, count in configs.changed_edits(analysis, dead):
        if edit.kind != "counts":
            return f"layer '{edit.layer}' ({edit.kind} {edit.key})"
        missing = [k for k in list(edit.key) + list(edit.also)
                   if k not in config]
        if missing:
            return f"{missing} of layer '{edit.layer}'"
    for block in configs.dead_blocks(analysis, dead):
        if (block.config or "num_layers") not in config:
            return f"{block.config or 'num_layers'} (a block of " \
                f"'{block.layer}')"
    return None


def _shrunk_class(model, analysis, dead, kept, config):
    """`model` rebuilt as its own class with the widths left, its weights
    copied without the zero units."""
    _warn_kept(kept, type(model).__name__)
    gone = configs.dead_blocks(analysis, dead)
    dropped = {id(v) for block in gone for v in block.weights}
    smaller = _rebuilt_class(model, analysis, dead, gone, config)
    if gone:
        _same_blocks(model, smaller, dropped, analysis)
    _copy_in_order(model.weights, smaller.weights,
                   _removals(analysis, dead), dropped, type(model).__name__)
    return smaller


def _same_blocks(model, smaller, dropped, analysis):
    """Raises a ValueError when a layer left after a block went is built
    differently in the rebuilt model (Gemma 2 and 3 choose local or global
    attention by a block's index): removing a block would shift them."""
    edited = {k for e in analysis.spaces.edits if e.kind == "counts"
              for k in list(e.key) + list(e.also)}
    kept = [layer for layer in model.layers
            if not (layer.weights and all(id(v) in dropped
                                          for v in layer.weights))]
    for old, new in zip(kept, smaller.layers):
        try:
            before, after = old.get_config(), new.get_config()
        except (AttributeError, TypeError, NotImplementedError):
            continue  # a layer whose config cannot be read
        differ = sorted(k for k in set(before) | set(after)
                        if k not in edited and k not in ("name", "num_layers")
                        and before.get(k) != after.get(k))
        if differ:
            raise ValueError(
                f"shrink() cannot remove whole blocks of this "
                f"{type(model).__name__}: its blocks are built by their "
                f"index, and layer '{old.name}' would become a different "
                f"one ({differ} change). Remove units only (blocks=0).")


def _rebuilt_class(model, analysis, dead, gone, config):
    """A new instance of `model`'s class (a keras_hub backbone, or any
    Functional subclass whose config is its constructor arguments) with
    the widths that are left."""
    cls = type(model).__name__
    before = dict(config)
    for edit, count in configs.changed_edits(analysis, dead):
        set_count(edit, count, config)
    for block in gone:
        config[block.config or "num_layers"] -= 1
    try:
        return type(model).from_config(config)
    except (TypeError, ValueError) as error:
        raise ValueError(
            f"shrink() could not build a {cls} with the widths left "
            f"({_summary(config, before)}): {error}") from error


def _summary(config, before):
    return ", ".join(f"{k}={config[k]}" for k in config
                     if before.get(k) != config[k]) or "nothing changed"


def _pruned(old, removals):
    value = np.asarray(old.numpy())
    for axis, rows in removals.get(id(old), (None, {}))[1].items():
        value = np.delete(value, sorted(rows), axis=axis)
    return value


def _copy_in_order(old_weights, new_weights, removals, dropped, what):
    """Copies the variables of a model rebuilt from its class, in the order
    both create them, those of the dead blocks left out."""
    kept = [v for v in old_weights if id(v) not in dropped]
    if len(kept) != len(new_weights):
        raise ValueError(
            f"shrink() rebuilt the {what} with {len(new_weights)} variables, "
            f"but {len(kept)} are left after removing the zero units.")
    for old, variable in zip(kept, new_weights):
        value = _pruned(old, removals)
        if tuple(value.shape) != tuple(variable.shape):
            raise ValueError(
                f"shrink() could not rebuild the {what}: variable "
                f"'{old.path}' has shape {tuple(variable.shape)} in the new "
                f"model but {tuple(value.shape)} after removing the zero "
                "units.")
        variable.assign(value)


def _copy_weights(source, smaller, removals, dropped):
    """Copies each layer's variables into the layer of the same name."""
    names = {layer.name for layer in smaller.layers}
    for layer in source.layers:
        if layer.name not in names:
            if all(id(v) in dropped for v in layer.weights):
                continue  # a block that went whole
            raise ValueError(f"shrink() lost layer '{layer.name}'.")
        _copy_in_order(layer.weights, smaller.get_layer(layer.name).weights,
                       removals, dropped,
                       f"layer '{layer.name}' ({type(layer).__name__})")
