"""The one walk over a model's layers, and what their configs record.

`attach`, the monitors, `sparsity` and `SparsityTarget` all see the layers
`iter_layers` yields.
"""

import keras


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


def owners(model):
    """`{id(variable): (path, layer, variable)}` in walk order: each of
    `model`'s weights under the innermost layer that holds it (later,
    deeper layers take a variable over)."""
    found = {}
    for path, layer in iter_layers(model):
        for variable in layer.weights:
            found[id(variable)] = (path, layer, variable)
    return found


def weights_by_layer(model, weights=None):
    """`[(layer path, [(weight name, variable)])]`: each variable once,
    under the innermost layer that holds it, in walk order.

    Args:
        model: A `keras.Model`.
        weights: None for all the weights, or a callable
            `(weight name, variable) -> bool` choosing some.
    """
    grouped = {}
    for path, _, variable in owners(model).values():
        name = variable.name.split("/")[-1]
        if weights is None or weights(name, variable):
            names = [n for n, _ in grouped.get(path, [])]
            # Keras lets a layer give two weights one name: number the
            # later ones, so that no two weights ever share a tag.
            unique, count = name, 1
            while unique in names:
                unique, count = f"{name}_{count}", count + 1
            grouped.setdefault(path, []).append((unique, variable))
    return list(grouped.items())


def _saved_in(config, serialized):
    """Whether `serialized` (a regularizer's config) is in `config`."""
    if config == serialized:
        return True
    if isinstance(config, dict):
        return any(_saved_in(value, serialized) for value in config.values())
    if isinstance(config, (list, tuple)):
        return any(_saved_in(value, serialized) for value in config)
    return False


def unsaved(model, chosen, regularizer):
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


def config_attribute(layer, weight):
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


def forget_compiled_steps(model):
    """Drops `model`'s compiled train and test functions: a step traced
    before a regularizer changed would not see the change, and the next
    call traces a new one."""
    for name in ("train_function", "test_function"):
        if getattr(model, name, None) is not None:
            setattr(model, name, None)
