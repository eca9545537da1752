"""Reads a model's graph into channel spaces: the analysis behind
`unit_groups`, `prune_units`, `shrink` and the live-units count."""

import dataclasses

import keras
import numpy as np

from keras_lk.structure import describe, hub, rules
from keras_lk.structure.channels import EXACT, UNKNOWN, Channels, Spaces
from keras_lk.structure.graph import read

_LAYER_MODULES = ("keras.layers", "keras.src.layers")
_OP_MODULES = ("keras.src.ops.numpy", "keras.src.ops.nn", "keras.ops")
# Layers keras.applications define for themselves: InceptionResNetV2's
# residual (inputs[0] + inputs[1] * scale) and ConvNeXt's per-channel
# scale.
_APPLICATION_LAYERS = {
    ("keras.src.applications.inception_resnet_v2", "CustomScaleLayer"):
        rules.merge,
    ("keras.src.applications.convnext", "LayerScale"): rules.per_channel}
_NEEDS_IN_SHAPE = {"Flatten": rules.flatten, "Reshape": rules.reshape}


@dataclasses.dataclass
class Analysis:
    """`graph`: the model's `Graph`; `spaces`: the union-find; `maps`:
    `Channels` per (scope, tensor key); `nodes`: every call walked, those
    of nested models included (each with its `scope` and `graph`);
    `blocks`: the `describe.Block`s that rules declared, in graph order
    (unit i of the space `block_space` is `blocks[i]`)."""

    graph: object
    spaces: Spaces
    maps: dict
    nodes: list
    blocks: list = dataclasses.field(default_factory=list)
    block_space: object = None
    called: dict = dataclasses.field(default_factory=dict)

    def roots(self):
        """Every space that is its own root, in the order made."""
        return [s for s in range(len(self.spaces.parent))
                if self.spaces.root(s) == s]

    def slices_of(self, root):
        return [s for s in self.spaces.slices
                if self.spaces.root(s.space) == root]

    def live(self, channels, dead):
        """How many positions of `channels` are not in `dead`, a dict from
        root space to a set of units."""
        count = len(channels)
        if not dead:
            return count
        for space in np.unique(channels.space):
            units = dead.get(self.spaces.root(int(space)))
            if units:
                mine = channels.unit[channels.space == space]
                count -= int(np.isin(mine, list(units)).sum())
        return count


def rule_of(node):
    """The rule for `node`, or None when keras_lk does not know its layer."""
    module = node.module
    described = describe.rule_for(node.operation)
    if described is not None:
        return _described(described)
    if module.startswith(_LAYER_MODULES):
        if node.class_name in _NEEDS_IN_SHAPE:
            return _NEEDS_IN_SHAPE[node.class_name]
        if node.class_name in rules.PASS_THROUGH:
            return lambda spaces, node, layer, maps, shape: maps[0]
        return rules.RULES.get(node.class_name)
    if module.startswith(_OP_MODULES) and (
            node.class_name in rules.ELEMENTWISE_OPS):
        return rules.merge
    if module.startswith(_OP_MODULES) and node.class_name == "Pad":
        return rules.pad
    return _APPLICATION_LAYERS.get((module, node.class_name))


def analyze(model):
    """The `Analysis` of a built Functional or Sequential model."""
    graph = read(model)
    analysis = Analysis(graph=graph, spaces=Spaces(), maps={}, nodes=[])
    spaces = analysis.spaces
    for key in graph.inputs:
        analysis.maps[("", key)] = _fresh(
            analysis, graph, "", key, key[0],
            "it is one of the model's inputs")
    _walk(analysis, graph, "")
    _block_space(analysis)
    for key in graph.outputs:
        spaces.keep(analysis.maps[("", key)],
                    "it is one of the model's outputs")
    spaces.finish()
    for key, channels in analysis.maps.items():
        analysis.maps[key] = spaces.resolve(channels)
    return analysis


def _described(rule):
    """A rule written with `describe.LayerUnits` as an analysis rule."""
    def apply(spaces, node, layer, maps, shape):
        units = describe.LayerUnits(spaces, node, layer, maps, shape,
                                    spaces.blocks)
        first = len(spaces.edits)
        out = rule(layer, units)
        units.finish(spaces.edits[first:])
        return out
    return apply


def _block_space(analysis):
    """One space whose unit i is the i-th block declared: its slices are
    the block's `zero` variables, whole."""
    blocks = analysis.spaces.blocks
    analysis.blocks = list(blocks)
    if not blocks:
        return
    spaces = analysis.spaces
    channels = spaces.new(len(blocks), "blocks")
    analysis.block_space = int(channels.space[0])
    spaces.kinds[analysis.block_space] = "blocks"
    for index, block in enumerate(blocks):
        block.index = index
        one = Channels(channels.space[index:index + 1],
                       channels.unit[index:index + 1])
        for variable in block.zero:
            size = variable.shape[0] if variable.shape else 1
            spaces.record(one, block.layer, variable, 0,
                          lambda p, n=size: np.arange(n)[None, :])


def _fresh(analysis, graph, scope, key, maker, reason, kind=EXACT):
    """A new space for tensor `key`, kept for `reason`."""
    shape = graph.shapes.get(key)
    size = shape[-1] if shape and shape[-1] is not None else 0
    return analysis.spaces.new(size, scope + maker, reason, kind)


def _is_graph_model(node):
    """A model called as a layer: Functional, Sequential, or a Functional
    subclass (a keras_hub backbone inside its task)."""
    return isinstance(node.operation, keras.Model) and node.calls == 1


def _walk(analysis, graph, scope):
    """Applies the rules to every call of `graph`, a model nested in
    `scope` ("" for the outer one, else "outer/")."""
    spaces, maps = analysis.spaces, analysis.maps
    for node in graph.nodes:
        node.scope, node.graph = scope, graph
        node.name = scope + node.name
        if not node.calls:
            for key in node.outputs:
                maps.setdefault((scope, key), _fresh(
                    analysis, graph, scope, key, node.name,
                    "it is one of the model's inputs"))
            continue
        analysis.nodes.append(node)
        inputs = [maps[(scope, key)] for key in node.inputs]
        extra = [maps[(scope, k)] for keys in node.kwargs.values()
                 for k in keys]
        shape = graph.shapes.get(node.outputs[0]) if node.outputs else None
        in_shape = graph.shapes.get(node.inputs[0]) if node.inputs else None
        rule = rule_of(node)
        out = None
        owner = id(node.operation) if node.operation is not None else None
        again = owner in analysis.called and analysis.called[owner] != scope
        if owner is not None and node.calls:
            analysis.called.setdefault(owner, scope)
        if again:  # the same layer in a nested model and outside it
            for m in inputs + extra:
                spaces.keep(m, f"'{node.name}' is also called in another "
                               "model (a shared layer)")
        if node.calls > 1:
            for m in inputs + extra:
                spaces.keep(m, f"'{node.name}' is called more than once "
                               "(a shared layer)")
        elif _is_graph_model(node) and not extra:
            out = _nested(analysis, node, inputs)
        elif rule is None or not inputs:
            rules.unknown(spaces, node, inputs + extra, shape)
        elif node.class_name in _NEEDS_IN_SHAPE and (
                node.module.startswith(_LAYER_MODULES)):
            out = rule(spaces, node, node.operation, inputs, shape, in_shape)
        else:
            for m in extra:
                spaces.keep(m, f"'{node.name}' takes it as a keyword "
                               "argument")
            out = rule(spaces, node, node.operation, inputs, shape)
        outs = out if isinstance(out, list) else [out] * len(node.outputs)
        for key, made in zip(node.outputs, outs):
            size = graph.shapes[key][-1] if graph.shapes[key] else None
            if made is not None and len(made) == size:
                maps[(scope, key)] = made
            else:
                shared = node.calls > 1
                maps[(scope, key)] = _fresh(
                    analysis, graph, scope, key, node.name[len(scope):],
                    f"'{node.name}' is called more than once (a shared "
                    "layer)" if shared else f"'{node.name}' makes it in a "
                    "way keras_lk cannot rebuild",
                    EXACT if shared else UNKNOWN)


def _nested(analysis, node, inputs):
    """A Functional or Sequential model called as a layer: its graph is
    walked in place, its inputs bound to the caller's channels. Returns the
    channels of each of its outputs."""
    try:
        inner = read(node.operation)
    except ValueError:  # a subclassed model: no graph
        rules.unknown(analysis.spaces, node, inputs, None)
        return None
    if len(inner.inputs) != len(inputs):
        rules.unknown(analysis.spaces, node, inputs, None,
                      "a nested model called with its inputs nested")
        return None
    scope = node.name + "/"
    for key, channels in zip(inner.inputs, inputs):
        analysis.maps[(scope, key)] = channels
    _walk(analysis, inner, scope)
    return [analysis.maps[(scope, key)] for key in inner.outputs]


def unit_norms(analysis, root, size, p=2, values=None):
    """Per unit of space `root`, the p-norm (p = 1, 2 or inf) of its counted
    slices. `values`: a dict caching each variable's numpy value."""
    values = {} if values is None else values
    total = np.zeros(size)
    for piece in analysis.slices_of(root):
        if not piece.counted:
            continue
        key = id(piece.variable)
        if key not in values:
            values[key] = np.asarray(piece.variable.numpy(), np.float64)
        rows = np.abs(np.moveaxis(values[key], piece.axis, 0)[piece.indices])
        rows = rows.reshape(len(piece.units), -1)
        if p == np.inf:
            np.maximum.at(total, piece.units, rows.max(axis=1, initial=0))
        else:
            np.add.at(total, piece.units, np.sum(rows ** p, axis=1))
    return total if p == np.inf else total ** (1.0 / p)
