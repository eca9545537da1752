"""Multiply-accumulates of a model's layers, dense or with only the live
units: `macs`."""

import math

from keras_lk.structure.analysis import analyze
from keras_lk.structure.groups import build_groups
from keras_lk.structure.surgery import dead_units


def _positions(shape):
    """The positions a layer repeats over: every axis but the batch and
    the last (an unknown length counts as 1)."""
    return math.prod(d or 1 for d in shape[1:-1]) if shape else 1


def node_macs(analysis, node, dead):
    """The multiply-accumulates of one call, per example."""
    graph, scope = node.graph, node.scope
    if node.calls != 1 or not node.inputs or not node.outputs:
        return 0
    maps = {key: analysis.maps[(scope, key)]
            for key in node.inputs + node.outputs
            if (scope, key) in analysis.maps}
    live = lambda channels: analysis.live(channels, dead)  # noqa: E731
    name, layer = node.class_name, node.operation
    ins = [maps[k] for k in node.inputs]
    out = maps[node.outputs[0]]
    out_shape = graph.shapes[node.outputs[0]]
    in_shape = graph.shapes[node.inputs[0]]
    if name == "Dense":
        return _positions(out_shape) * live(ins[0]) * live(out)
    if name.startswith(("Conv1D", "Conv2D", "Conv3D")):
        size = math.prod(layer.kernel_size)
        where = in_shape if "Transpose" in name else out_shape
        groups = node.config.get("groups", 1) or 1
        if groups > 1 and groups == len(ins[0]) == len(out):
            return _positions(where) * size * live(out)  # one per channel
        return _positions(where) * size * live(ins[0]) * live(out) // groups
    if name.startswith("DepthwiseConv"):
        return _positions(out_shape) * math.prod(layer.kernel_size) * live(
            out)
    if name.startswith("SeparableConv"):
        middle = live(ins[0].repeat(layer.depth_multiplier))
        return _positions(out_shape) * (
            math.prod(layer.kernel_size) * middle + middle * live(out))
    if name in ("LSTM", "GRU", "SimpleRNN", "Bidirectional"):
        directions, units = 1, live(out)
        if name == "Bidirectional":
            name, directions = node.config["layer"]["class_name"], 2
            if node.config.get("merge_mode", "concat") == "concat":
                units //= 2  # `out` holds both directions' units
        gates = {"LSTM": 4, "GRU": 3, "SimpleRNN": 1}[name]
        steps = in_shape[1] or 1
        return directions * steps * gates * (live(ins[0]) + units) * units
    if name == "MultiHeadAttention":
        return _attention_macs(analysis, node, ins, out, dead)
    if name in ("Functional", "Sequential"):
        return 0  # its layers are counted as calls of their own
    return 0


def _attention_macs(analysis, node, ins, out, dead):
    layer, shapes = node.operation, node.graph.shapes
    query, value = ins[0], ins[1] if len(ins) > 1 else ins[0]
    key = ins[2] if len(ins) > 2 else value
    keys = node.inputs + node.inputs[-1:] * (3 - len(node.inputs))
    tq, tv, tk = (_positions(shapes[k]) for k in (keys[0], keys[1], keys[2]))
    heads = layer.num_heads
    for piece in analysis.spaces.slices:
        if piece.layer == node.name and piece.variable.path.endswith(
                "attention_output/kernel") and piece.axis == 0:
            root = analysis.spaces.root(piece.space)
            heads -= len(dead.get(root, ()))
            break
    dk, dv = layer.key_dim, layer.value_dim or layer.key_dim
    live = lambda channels: analysis.live(channels, dead)  # noqa: E731
    return heads * (
        tq * live(query) * dk + tk * live(key) * dk + tv * live(value) * dv
        + tq * tk * dk + tq * tv * dv + tq * dv * live(out))


def total_macs(analysis, dead):
    """The multiply-accumulates of every call, without the `dead` units
    (`{root: set of units}`)."""
    return int(sum(node_macs(analysis, node, dead)
                   for node in analysis.nodes))


def macs(model, live=False):
    """The multiply-accumulates of one example through `model`.

    Counted for the layers that multiply by weights: Dense, the
    convolutions (depthwise, separable and transposed too), LSTM, GRU,
    SimpleRNN and MultiHeadAttention (projections and attention). An axis
    of unknown length (a sequence of `None` steps) counts as one step, and
    layers keras_lk cannot look inside count as zero.

    Args:
        model: A built Functional or Sequential `keras.Model`.
        live: When True, count as if every unit whose slices are all zero
            were removed: the count of `shrink(model)`.

    Returns:
        An int.

    Examples:

        >>> import keras, keras_lk
        >>> model = keras.Sequential([keras.Input((8,)),
        ...     keras.layers.Dense(16), keras.layers.Dense(2)])
        >>> keras_lk.macs(model)
        160
        >>> _ = keras_lk.prune_units(model, 0.5)
        >>> keras_lk.macs(model, live=True)
        80
    """
    analysis = analyze(model)
    dead = {}
    if live:
        dead = dead_units(analysis, build_groups(analysis), "keep")
    return total_macs(analysis, dead)
