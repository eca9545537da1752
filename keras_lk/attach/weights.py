"""Put a regularizer on (or take it off) the kernels of a built model.

The walk over its layers is `walk.py`; by units, `units.py`.
"""

import warnings

import keras

from keras_lk.attach.units import attach_units, detach_units
from keras_lk.attach.walk import (config_attribute, forget_compiled_steps,
                                  iter_layers, unsaved)
from keras_lk.core import checks

STRUCTURES = (None, "units")

__all__ = ["attach", "detach"]


def _select(model, layer_types, names, predicate, weight):
    if layer_types is not None:
        layer_types = tuple(layer_types) if isinstance(
            layer_types, (list, tuple)) else (layer_types,)
        if not all(isinstance(t, type) for t in layer_types):
            raise checks.invalid(
                "layer_types", "a layer class or a tuple of layer classes",
                layer_types)
    if names is not None:
        names = [names] if isinstance(names, str) else list(names)
    if predicate is not None and not callable(predicate):
        raise checks.invalid("predicate", "a callable", predicate)

    layers = list(iter_layers(model))
    if names is not None:
        known = {path for path, _ in layers} | {l.name for _, l in layers}
        unknown = [n for n in names if n not in known]
        if unknown:
            raise ValueError(
                f"No layer named {unknown} in model {model.name!r}. "
                f"Layers: {sorted(path for path, _ in layers)}")
    chosen = []
    for path, layer in layers:
        if not isinstance(getattr(layer, weight, None), keras.Variable):
            continue
        if layer_types is not None and not isinstance(layer, layer_types):
            continue
        if names is not None and path not in names and layer.name not in names:
            continue
        if predicate is not None and not predicate(layer):
            continue
        chosen.append((path, layer))
    if not chosen:
        raise ValueError(
            f"No layer of model {model.name!r} matches: weight={weight!r}, "
            f"layer_types={layer_types!r}, names={names!r}, "
            f"predicate={predicate!r}. Layers with a {weight!r}: "
            f"{[p for p, l in layers if hasattr(l, weight)]}")
    return chosen


def _check_structure(structure, layer_types, predicate, weight):
    if structure not in STRUCTURES:
        raise checks.invalid("structure", "None or 'units'", structure)
    if structure is not None and (layer_types is not None
                                  or predicate is not None
                                  or weight != "kernel"):
        raise ValueError(
            "With structure='units' the groups are chosen by `names` (unit "
            "group names, as keras_lk.unit_groups lists them); layer_types, "
            "predicate and weight do not apply. Received: layer_types="
            f"{layer_types!r}, predicate={predicate!r}, weight={weight!r}")


def _set_regularizer(model, chosen, regularizer, weight):
    for _, layer in chosen:
        getattr(layer, weight).regularizer = regularizer
        # The layer's config is what `.keras` saving records.
        attribute = config_attribute(layer, weight)
        if attribute is not None:
            setattr(layer, attribute, regularizer)
    forget_compiled_steps(model)


def attach(model, regularizer, *, layer_types=None, names=None,
           predicate=None, weight="kernel", structure=None):
    """Puts `regularizer` on the kernels of an already built model.

    For models from `keras.applications` or loaded from disk: no rebuild, no
    new layers. Afterwards `model.losses` and `fit` include the penalty and
    the layers' configs record it (for layers whose config has a regularizer
    for that weight), so the model saves with it. Layers are
    chosen by every filter given (all must match); with none, every layer
    that has the weight is chosen. Nested models and layers' sublayers are
    searched too (MultiHeadAttention's `query`, `key`, `value` and
    `attention_output` projections, an RNN's cell, a wrapper's layer), and
    a layer may be named by its own name or its path (`"encoder/dense"`,
    `"block_1/mha/query"`). A layer whose regularizer the saved config
    would not record (MultiHeadAttention's projections, whose parent's
    config has one argument for all four; a custom layer's weight its
    `get_config` has no regularizer for) trains with it but is saved
    without it: a `UserWarning` says so.

    Args:
        model: A built `keras.Model`.
        regularizer: A `keras.regularizers.Regularizer`, e.g. an
            `LkRegularizer`.
        layer_types: A layer class or tuple of classes, or None for any.
            Defaults to None.
        names: A layer name or list of names, or None for any. Defaults to
            None.
        predicate: A callable `layer -> bool`, or None. Defaults to None.
        weight: The attribute holding the weight to regularize: `"kernel"`,
            `"embeddings"`, `"depthwise_kernel"`, ... Defaults to `"kernel"`.
        structure: None (each weight on its own), or `"units"`: the group
            penalty `alpha * sum_g ||w_g||_2^k` (or the mean over each
            group's units) over every removable unit group of
            `keras_lk.unit_groups(model)`, `w_g` being all of a unit's
            weights across layers (its kernel column and bias, the
            BatchNormalization's scale and offset, the consumers' rows).
            It takes an `LkRegularizer(k, alpha, reduction, proximal)`
            with a finite `k`. With `proximal=True` (k >= 0) a
            `ProximalOptimizer`'s group proximal step sets whole units
            exactly to zero (k <= 1), so that `keras_lk.shrink` removes
            them; with `proximal=False` (k > 0) it is a gradient penalty
            for any optimizer, which shrinks units without making them
            exactly zero. `names` then picks unit groups by name. The
            penalty replaces the regularizers of the weights it covers.
            Defaults to None.

    Returns:
        The list of layers it attached the regularizer to.

    Raises:
        ValueError: If the regularizer is not one, a name is unknown, or no
            layer matches.

    Examples:

        >>> import keras, keras_lk
        >>> model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(4),
        ...                           keras.layers.Dense(2)])
        >>> layers = keras_lk.attach(model, keras_lk.LkRegularizer(k=1),
        ...                          layer_types=keras.layers.Dense)
        >>> len(layers), len(model.losses)
        (2, 2)

        By units (whole units of `hidden` go to zero during training):

        >>> inputs = keras.Input((8,))
        >>> hidden = keras.layers.Dense(16, "relu", name="hidden")(inputs)
        >>> outputs = keras.layers.Dense(2, name="head")(hidden)
        >>> model = keras.Model(inputs, outputs)
        >>> layers = keras_lk.attach(model, keras_lk.LkRegularizer(
        ...     k=0.5, alpha=1e-3, proximal=True), structure="units")
        >>> [layer.name for layer in layers]  # head: its rows of `hidden`
        ['hidden', 'head']
    """
    _check_structure(structure, layer_types, predicate, weight)
    if structure == "units":
        return attach_units(model, regularizer, names)
    if not isinstance(regularizer, keras.regularizers.Regularizer):
        raise checks.invalid(
            "regularizer", "a keras.regularizers.Regularizer instance",
            regularizer)
    chosen = _select(model, layer_types, names, predicate, weight)
    _set_regularizer(model, chosen, regularizer, weight)
    lost = unsaved(model, chosen, regularizer)
    if lost:
        warnings.warn(
            f"attach: the regularizer on {lost} trains and is in "
            "model.losses, but the config of the layer that holds them "
            "(e.g. MultiHeadAttention, whose query/key/value/output share "
            "one kernel_regularizer argument) does not record it, so a "
            "saved model loads without it. To save it, pass the regularizer "
            "to that layer's constructor, or attach it again after loading.",
            stacklevel=2)
    return [layer for _, layer in chosen]


def detach(model, *, layer_types=None, names=None, predicate=None,
           weight="kernel", structure=None):
    """Removes the regularizer from the chosen layers' weight.

    The counterpart of `attach`, with the same filters. Layers that match but
    carry no regularizer are left alone and not returned.

    Args:
        model: A built `keras.Model`.
        layer_types: A layer class or tuple of classes, or None for any.
            Defaults to None.
        names: A layer name or list of names, or None for any. Defaults to
            None.
        predicate: A callable `layer -> bool`, or None. Defaults to None.
        weight: The attribute holding the weight. Defaults to `"kernel"`.
        structure: None, or `"units"`: remove the group penalty of
            `attach(..., structure="units")` from every weight (or, with
            `names`, from those unit groups only). Defaults to None.

    Returns:
        The list of layers a regularizer was removed from.

    Examples:

        >>> import keras, keras_lk
        >>> model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(4)])
        >>> _ = keras_lk.attach(model, keras_lk.LkRegularizer())
        >>> len(keras_lk.detach(model)), len(model.losses)
        (1, 0)
    """
    _check_structure(structure, layer_types, predicate, weight)
    if structure == "units":
        return detach_units(model, names)
    chosen = [(path, layer) for path, layer in _select(
        model, layer_types, names, predicate, weight)
        if getattr(layer, weight).regularizer is not None]
    _set_regularizer(model, chosen, None, weight)
    return [layer for _, layer in chosen]
