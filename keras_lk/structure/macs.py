"""Multiply-accumulates of a model's layers, dense or with only the live
units: `macs`."""

import math

import numpy as np

from keras_lk.structure import describe
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
    if describe.rule_for(layer) is not None:
        return _described_macs(analysis, node, out_shape, dead)
    return 0


def _described_macs(analysis, node, out_shape, dead):
    """A layer described with `unit_rule` (keras_hub's blocks): per
    position, the product of the live sizes of each of its kernels (the
    variables named `kernel`); the kernels of dead blocks count zero."""
    gone = set()
    if analysis.block_space is not None:
        for unit in dead.get(analysis.block_space, ()):
            gone.update(id(v) for v in analysis.blocks[unit].weights)
    lost = {}
    for piece in analysis.spaces.slices:
        if piece.layer != node.name or not piece.counted:
            continue
        root = analysis.spaces.root(piece.space)
        units = dead.get(root)
        if not units or root == analysis.block_space:
            continue
        rows = piece.indices[np.isin(piece.units, list(units))].ravel()
        lost.setdefault((id(piece.variable), piece.axis), set()).update(
            rows.tolist())
    total = 0
    for variable in node.operation.weights:
        if not variable.path.endswith("kernel") or id(variable) in gone:
            continue
        sizes = [int(d) - len(lost.get((id(variable), axis), ()))
                 for axis, d in enumerate(variable.shape)]
        total += math.prod(sizes)
    return _positions(out_shape) * total


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
    SimpleRNN and MultiHeadAttention (projections and attention), and the
    kernels of layers described with `unit_rule` (keras_hub's Transformer
    blocks: their projections, not the attention's products). An axis
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
        dead = dead_units(analysis, build_groups(analysis, blocks=True),
                          "keep")
    return total_macs(analysis, dead)


class MacsByCounts:
    """The multiply-accumulates left when `removed[i]` units of each of
    `groups` are removed, as a polynomial of the counts:
    `dense * (1 - a . r - r' Q r)`: `a . r + r' Q r` is the share of the
    MACs removed.

    Every layer's count is a product of at most two channel counts, each a
    sum of live units of some groups, so the polynomial is found from the
    counts with no unit, one or two units of a group and one unit of each
    pair of groups removed. It is exact where a layer's count depends only
    on how many units each group keeps; `check` tries random removals and
    raises a ValueError where it does not (e.g. grouped convolutions,
    whose count is rounded per group).

    Args:
        analysis: `keras_lk.structure.analysis.analyze(model)`.
        groups: The `UnitGroup`s whose units may go.
    """

    def __init__(self, analysis, groups):
        self.analysis = analysis
        self.groups = list(groups)
        self.dense = float(total_macs(analysis, {}))
        n = len(self.groups)
        self.linear = np.zeros(n)
        self.quadratic = np.zeros((n, n))
        one = [self._share_removed(self._unit(i)) for i in range(n)]
        for i, group in enumerate(self.groups):
            if group.size > 2:
                two = self._share_removed(self._unit(i, 2))
                self.quadratic[i, i] = (two - 2 * one[i]) / 2
            self.linear[i] = one[i] - self.quadratic[i, i]
            for j in range(i):
                both = self._share_removed(self._unit(i) + self._unit(j))
                self.quadratic[i, j] = self.quadratic[j, i] = (
                    both - one[i] - one[j]) / 2

    def _unit(self, index, count=1):
        removed = np.zeros(len(self.groups), int)
        removed[index] = count
        return removed

    def _share_removed(self, removed, seed=None):
        """The share of the MACs removed with `removed[i]` units of each
        group gone (the first ones, or with `seed` random ones), counted on
        the graph."""
        rng = None if seed is None else np.random.default_rng(seed)
        dead = {}
        for group, count in zip(self.groups, removed):
            if count:
                units = (range(count) if rng is None else rng.choice(
                    group.size, count, replace=False))
                dead[group._root] = {int(u) for u in units}
        left = total_macs(self.analysis, dead)
        return (self.dense - left) / max(self.dense, 1.0)

    def fraction_removed(self, removed):
        """The polynomial's fraction of the MACs removed (NumPy)."""
        removed = np.asarray(removed, float)
        return (removed @ self.linear
                + np.einsum("...i,ij,...j->...", removed, self.quadratic,
                            removed))

    def check(self, trials=4, seed=0):
        """Raises a ValueError unless the polynomial matches the graph's
        count on `trials` random removals (of random units)."""
        rng = np.random.default_rng(seed)
        for trial in range(trials):
            removed = np.array([rng.integers(0, g.size) for g in self.groups])
            counted = self._share_removed(removed, seed=trial)
            guessed = self.fraction_removed(removed)
            if abs(counted - guessed) > 1e-6 * max(1.0, abs(counted)):
                raise ValueError(
                    "The multiply-accumulates of this model do not depend "
                    "only on how many units each group keeps (removing "
                    f"{dict(zip([g.name for g in self.groups], removed.tolist()))}"
                    f" removes {counted:.6f} of them, the count-based "
                    f"estimate {guessed:.6f}), so a ranking across groups "
                    "cannot aim at a share of them. Use allocation='uniform' "
                    "with target_macs, or target= (a fraction of units).")
