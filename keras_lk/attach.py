"""Put a regularizer on (or take it off) the kernels of a built model."""

import warnings

import keras

from keras_lk import _validation
from keras_lk.regularizers import LkRegularizer
from keras_lk.structure.group_penalty import (GroupLkRegularizer, UnitPlan,
                                              unit_records)

STRUCTURES = (None, "units")


def _sublayers(layer):
    """The layers `layer` holds: a model's `layers`; for any other layer,
    the layers among its attributes (directly, or in a list, tuple or
    dict), as Keras tracks them: MultiHeadAttention's query/key/value/
    output projections, a wrapper's inner layer, a keras_hub block's
    parts, a custom layer's sublayers."""
    if isinstance(layer, keras.Model):
        return list(layer.layers)
    found = []

    def add(value):
        if isinstance(value, keras.layers.Layer):
            found.append(value)
        elif isinstance(value, (list, tuple)):
            for item in value:
                if isinstance(item, keras.layers.Layer):
                    found.append(item)
        elif isinstance(value, dict):
            for item in value.values():
                if isinstance(item, keras.layers.Layer):
                    found.append(item)

    for value in vars(layer).values():
        add(value)
    return found


def iter_layers(model):
    """Yields every layer of `model` once, depth first: the layers of
    nested models and the sublayers of layers (attention projections,
    wrapped layers, blocks of layers).

    This is keras_lk's one walk over a model: `attach`, the monitors,
    `sparsity` and `SparsityTarget` all see the layers it yields. A layer
    reached twice (shared) is yielded once, at its first path.

    Args:
        model: A `keras.Model` or a `keras.layers.Layer`.

    Yields:
        `(path, layer)` pairs, `path` being the slash-joined names from
        below `model` down to the layer, e.g. `"encoder/dense"` or
        `"block_1/mha/query"`.

    Examples:

        >>> import keras
        >>> tokens = keras.Input((5, 8))
        >>> mha = keras.layers.MultiHeadAttention(2, 4, name="mha")
        >>> model = keras.Model(tokens, mha(tokens, tokens))
        >>> [path for path, _ in iter_layers(model)][1:3]
        ['mha', 'mha/query']
    """
    seen = {id(model)}

    def walk(layer, prefix):
        for child in _sublayers(layer):
            if id(child) in seen:
                continue
            seen.add(id(child))
            path = f"{prefix}{child.name}"
            yield path, child
            yield from walk(child, f"{path}/")

    yield from walk(model, "")


def weights_by_layer(model, weights=None):
    """`[(layer path, [(weight name, variable)])]`: each variable once,
    under the innermost layer that holds it, in walk order.

    Args:
        model: A `keras.Model`.
        weights: None for all the weights, or a callable
            `(weight name, variable) -> bool` choosing some.
    """
    owner = {}      # variable id -> (path, name, variable)
    order = []
    for path, layer in iter_layers(model):
        for variable in layer.weights:
            if id(variable) not in owner:
                order.append(id(variable))
            # Later (deeper) layers take the variable over.
            owner[id(variable)] = (path, variable.name.split("/")[-1],
                                   variable)
    grouped = {}
    for key in order:
        path, name, variable = owner[key]
        if weights is None or weights(name, variable):
            names = [n for n, _ in grouped.get(path, [])]
            # Keras lets a layer give two weights one name: number the
            # later ones, so that no two weights ever share a tag.
            unique, count = name, 1
            while unique in names:
                unique, count = f"{name}_{count}", count + 1
            grouped.setdefault(path, []).append((unique, variable))
    return list(grouped.items())


def _select(model, layer_types, names, predicate, weight):
    if layer_types is not None:
        layer_types = tuple(layer_types) if isinstance(
            layer_types, (list, tuple)) else (layer_types,)
        if not all(isinstance(t, type) for t in layer_types):
            raise _validation.invalid(
                "layer_types", "a layer class or a tuple of layer classes",
                layer_types)
    if names is not None:
        names = [names] if isinstance(names, str) else list(names)
    if predicate is not None and not callable(predicate):
        raise _validation.invalid("predicate", "a callable", predicate)

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


def _saved_in(config, serialized):
    """Whether `serialized` (a regularizer's config) is in `config`."""
    if config == serialized:
        return True
    if isinstance(config, dict):
        return any(_saved_in(value, serialized) for value in config.values())
    if isinstance(config, (list, tuple)):
        return any(_saved_in(value, serialized) for value in config)
    return False


def _unsaved(model, chosen, regularizer):
    """The paths of chosen layers whose regularizer the model's config does
    not record: their outermost non-model ancestor's config, or for a
    layer directly in a model its own config, does not carry it."""
    if regularizer is None:
        return []
    serialized = keras.saving.serialize_keras_object(regularizer)
    top = {}
    for path, layer in iter_layers(model):
        top.setdefault(path, layer)
    lost = []
    for path, layer in chosen:
        parts = path.split("/")
        # The outermost layer above it that is not a model: its config is
        # what `.keras` saving records for this part of the model.
        outer = None
        for depth in range(1, len(parts)):
            candidate = top.get("/".join(parts[:depth]))
            if candidate is not None and not isinstance(candidate,
                                                        keras.Model):
                outer = candidate
                break
        # With none, the layer's own config (a custom layer's may not
        # record a regularizer for that weight).
        holder = layer if outer is None else outer
        if not _saved_in(holder.get_config(), serialized):
            lost.append(path)
    return lost


def _config_attribute(layer, weight):
    """The layer attribute its config saves `weight`'s regularizer from.

    `kernel_regularizer` for Dense and Conv, `embeddings_regularizer` for
    Embedding, `depthwise_regularizer` for DepthwiseConv's `kernel`, and for
    SeparableConv's `depthwise_kernel` / `pointwise_kernel`; None if the
    layer has none.
    """
    candidates = [f"{weight}_regularizer"]
    if weight.endswith("_kernel"):
        candidates.append(weight[:-len("_kernel")] + "_regularizer")
    if weight == "kernel":
        candidates.append("depthwise_regularizer")
    for name in candidates:
        if hasattr(layer, name):
            return name
    return None


def _set_regularizer(model, chosen, regularizer, weight):
    for _, layer in chosen:
        getattr(layer, weight).regularizer = regularizer
        # The layer's config is what `.keras` saving records.
        attribute = _config_attribute(layer, weight)
        if attribute is not None:
            setattr(layer, attribute, regularizer)
    # A compiled step traced before the change would not see it.
    for name in ("train_function", "test_function"):
        if getattr(model, name, None) is not None:
            setattr(model, name, None)


def _variable_owners(model):
    """`{id(variable): (path, layer, attribute)}`: the layer attribute that
    holds each variable (`kernel`, `gamma`, `recurrent_kernel`, ...)."""
    owners = {}
    for path, layer in iter_layers(model):
        for attribute, value in vars(layer).items():
            if isinstance(value, keras.Variable):
                # Deeper layers take a variable over, as weights_by_layer.
                owners[id(value)] = (path, layer, attribute.lstrip("_"))
    return owners


def _reset_steps(model):
    # A compiled step traced before the change would not see it.
    for name in ("train_function", "test_function"):
        if getattr(model, name, None) is not None:
            setattr(model, name, None)


def _check_structure(structure, layer_types, predicate, weight):
    if structure not in STRUCTURES:
        raise _validation.invalid("structure", "None or 'units'", structure)
    if structure is not None and (layer_types is not None
                                  or predicate is not None
                                  or weight != "kernel"):
        raise ValueError(
            "With structure='units' the groups are chosen by `names` (unit "
            "group names, as keras_lk.unit_groups lists them); layer_types, "
            "predicate and weight do not apply. Received: layer_types="
            f"{layer_types!r}, predicate={predicate!r}, weight={weight!r}")


def _attach_units(model, regularizer, names):
    """`attach(..., structure="units")`."""
    if not (isinstance(regularizer, LkRegularizer) and regularizer.proximal):
        raise _validation.invalid(
            "regularizer", "an LkRegularizer(k, alpha, reduction, "
            "proximal=True) with structure='units' (a group penalty is "
            "applied as a group proximal step by keras_lk.ProximalOptimizer)",
            regularizer)
    if regularizer.k == float("inf"):
        raise _validation.invalid(
            "regularizer", "a finite k with structure='units'", regularizer)
    if names is not None:
        names = [names] if isinstance(names, str) else list(names)
    records, chosen, frozen = unit_records(model, names)
    if frozen:
        warnings.warn(
            f"attach: unit groups {frozen} slice weights that are not "
            "trainable, which no optimizer step can zero: they get no "
            "penalty.", stacklevel=3)
    if not chosen:
        raise ValueError(
            f"attach(structure='units'): model {model.name!r} has no unit "
            "group that can be removed and trained. keras_lk.unit_groups("
            "model) lists its groups and why each is kept.")
    owners = _variable_owners(model)
    touched, lost, replaced = [], [], []
    for key, (variable, slices) in records.items():
        path, layer, attribute = owners[key]
        old = getattr(variable, "regularizer", None)
        if old is not None and not isinstance(old, GroupLkRegularizer):
            replaced.append(variable.path)
        group_regularizer = GroupLkRegularizer(
            regularizer.k, regularizer.alpha, regularizer.reduction, slices)
        variable.regularizer = group_regularizer
        config_attribute = _config_attribute(layer, attribute)
        if config_attribute is not None:
            setattr(layer, config_attribute, group_regularizer)
        lost += _unsaved(model, [(path, layer)], group_regularizer)
        if all(layer is not other for other in touched):
            touched.append(layer)
    if replaced:
        warnings.warn(f"attach: the group penalty replaces the regularizers "
                      f"of {replaced}.", stacklevel=3)
    if lost:
        warnings.warn(
            f"attach: the group penalty on {sorted(set(lost))} trains, but "
            "the config of the layer that holds them (e.g. MultiHeadAttention"
            ", whose projections share one kernel_regularizer argument) does "
            "not record it, so a saved model loads without it. Attach it "
            "again after loading.", stacklevel=3)
    UnitPlan.build([variable for variable, _ in records.values()])
    _reset_steps(model)
    return touched


def _detach_units(model, names):
    touched = []
    owners = _variable_owners(model)
    names = None if names is None else set(
        [names] if isinstance(names, str) else names)
    for path, layer, attribute in owners.values():
        variable = getattr(layer, attribute, None)
        if variable is None and hasattr(layer, "_" + attribute):
            variable = getattr(layer, "_" + attribute)
        old = getattr(variable, "regularizer", None)
        if not isinstance(old, GroupLkRegularizer):
            continue
        if names is not None:
            kept = [s for s in old.slices if s["group"] not in names]
            if len(kept) == len(old.slices):
                continue
            new = (GroupLkRegularizer(old.k, old.alpha, old.reduction, kept)
                   if kept else None)
        else:
            new = None
        variable.regularizer = new
        config_attribute = _config_attribute(layer, attribute)
        if config_attribute is not None:
            setattr(layer, config_attribute, new)
        if all(layer is not other for other in touched):
            touched.append(layer)
    _reset_steps(model)
    return touched


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
            It needs `LkRegularizer(k, alpha, reduction, proximal=True)`
            with a finite `k >= 0` and a `ProximalOptimizer`, whose group
            proximal step sets whole units exactly to zero (k <= 1), so
            that `keras_lk.shrink` removes them. `names` then picks unit
            groups by name. The penalty replaces the regularizers of the
            weights it covers. Defaults to None.

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
        return _attach_units(model, regularizer, names)
    if not isinstance(regularizer, keras.regularizers.Regularizer):
        raise _validation.invalid(
            "regularizer", "a keras.regularizers.Regularizer instance",
            regularizer)
    chosen = _select(model, layer_types, names, predicate, weight)
    _set_regularizer(model, chosen, regularizer, weight)
    lost = _unsaved(model, chosen, regularizer)
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
        return _detach_units(model, names)
    chosen = [(path, layer) for path, layer in _select(
        model, layer_types, names, predicate, weight)
        if getattr(layer, weight).regularizer is not None]
    _set_regularizer(model, chosen, None, weight)
    return [layer for _, layer in chosen]
