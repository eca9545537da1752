"""Put a regularizer on (or take it off) the kernels of a built model."""

import keras

from keras_lk import _validation


def iter_layers(model):
    """Yields every layer of `model` once, depth first, nested models too.

    A layer shared between several places is yielded once.

    Args:
        model: A `keras.Model` or a `keras.layers.Layer`.

    Yields:
        `(path, layer)` pairs, `path` being the slash-joined names of the
        enclosing models below `model` and the layer, e.g. `"encoder/dense"`.
    """
    seen = set()

    def walk(layer, prefix):
        for child in getattr(layer, "layers", []):
            if id(child) in seen:
                continue
            seen.add(id(child))
            path = f"{prefix}{child.name}"
            yield path, child
            if isinstance(child, keras.Model):
                yield from walk(child, f"{path}/")

    yield from walk(model, "")


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
        chosen.append(layer)
    if not chosen:
        raise ValueError(
            f"No layer of model {model.name!r} matches: weight={weight!r}, "
            f"layer_types={layer_types!r}, names={names!r}, "
            f"predicate={predicate!r}. Layers with a {weight!r}: "
            f"{[p for p, l in layers if hasattr(l, weight)]}")
    return chosen


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


def _set_regularizer(model, layers, regularizer, weight):
    for layer in layers:
        getattr(layer, weight).regularizer = regularizer
        # The layer's config is what `.keras` saving records.
        attribute = _config_attribute(layer, weight)
        if attribute is not None:
            setattr(layer, attribute, regularizer)
    # A compiled step traced before the change would not see it.
    for name in ("train_function", "test_function"):
        if getattr(model, name, None) is not None:
            setattr(model, name, None)


def attach(model, regularizer, *, layer_types=None, names=None,
           predicate=None, weight="kernel"):
    """Puts `regularizer` on the kernels of an already built model.

    For models from `keras.applications` or loaded from disk: no rebuild, no
    new layers. Afterwards `model.losses` and `fit` include the penalty and
    the layers' configs record it (for layers whose config has a regularizer
    for that weight), so the model saves with it. Layers are
    chosen by every filter given (all must match); with none, every layer
    that has the weight is chosen. Nested models are searched too, and a
    layer may be named by its own name or its path (`"encoder/dense"`).

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

    Returns:
        The list of layers it attached the regularizer to.

    Raises:
        ValueError: If the regularizer is not one, a name is unknown, or no
            layer matches.

    Example:

    >>> import keras, keras_lk
    >>> model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(4),
    ...                           keras.layers.Dense(2)])
    >>> layers = keras_lk.attach(model, keras_lk.LkRegularizer(k=1),
    ...                          layer_types=keras.layers.Dense)
    >>> len(layers), len(model.losses)
    (2, 2)
    """
    if not isinstance(regularizer, keras.regularizers.Regularizer):
        raise _validation.invalid(
            "regularizer", "a keras.regularizers.Regularizer instance",
            regularizer)
    layers = _select(model, layer_types, names, predicate, weight)
    _set_regularizer(model, layers, regularizer, weight)
    return layers


def detach(model, *, layer_types=None, names=None, predicate=None,
           weight="kernel"):
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

    Returns:
        The list of layers a regularizer was removed from.

    Example:

    >>> import keras, keras_lk
    >>> model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(4)])
    >>> _ = keras_lk.attach(model, keras_lk.LkRegularizer())
    >>> len(keras_lk.detach(model)), len(model.losses)
    (1, 0)
    """
    layers = _select(model, layer_types, names, predicate, weight)
    layers = [l for l in layers if getattr(l, weight).regularizer is not None]
    _set_regularizer(model, layers, None, weight)
    return layers
