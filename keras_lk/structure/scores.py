"""The scores that rank units for `prune_units`: one protocol, one table.

A score maps each unit group to one number per unit; the lowest go first.
Magnitudes read the weights; the data scores read a few batches of the
user's data, accumulating one number per unit (never the activations):

| score | per unit | data |
|---|---|---|
| "l1", "l2" | the norm of all its slices | none |
| "lamp" | LAMP: its squared norm over the sum of those at or above it in its group, comparable across groups | none |
| "taylor" | first order: abs(sum over its slices of w * dL/dw), the loss the model was compiled with | `(x, y)` |
| "activation" | the norm of its output activations times the norm of its outgoing weights (structured Wanda / FLAP) | inputs |

Blocks (the "blocks" group) are scored by their output projections' norm,
or with data by their influence: the mean over tokens of
1 - cos(block input, block output), how much a block changes its residual
stream (ShortGPT).
"""

import keras
import numpy as np

from keras_lk.core import backend
from keras_lk.structure.analysis import unit_norms

# Batches longer than this are split: a score holds one batch's
# activations of one layer at a time.
CHUNK = 32


class Score:
    """One way to rank units. `data`: None (reads only the weights),
    "inputs" (what `model(...)` takes) or "pairs" (`(x, y)` batches)."""

    name = None
    data = None

    def __call__(self, context, groups):
        """`{group name: per-unit scores}` for `groups`."""
        raise NotImplementedError


class Magnitude(Score):
    def __init__(self, name, p):
        self.name, self.p = name, p

    def __call__(self, context, groups):
        return {g.name: g.norms(self.p) for g in groups}


class Lamp(Score):
    name = "lamp"

    def __call__(self, context, groups):
        return {g.name: lamp(g.norms(2)) for g in groups}


def lamp(norms):
    """Each unit's LAMP score: its squared norm over the sum of the squared
    norms of the units ranked at or above it (1 for the largest)."""
    squares = np.square(np.asarray(norms, np.float64))
    order = np.argsort(squares, kind="stable")
    ordered = squares[order]
    suffix = np.cumsum(ordered[::-1])[::-1]
    scores = np.empty_like(squares)
    scores[order] = ordered / np.maximum(suffix, 1e-30)
    return scores


class Taylor(Score):
    name, data = "taylor", "pairs"

    def __call__(self, context, groups):
        model = context.model
        loss = _compiled_loss(model)
        variables = _variables(context.analysis, groups)
        totals = {id(v): np.zeros(v.shape, np.float64) for v in variables}
        frozen = [v.path for v in variables if not v.trainable]
        if frozen:
            raise ValueError(
                "score='taylor' needs the gradient of every weight it "
                "scores; these are not trainable: "
                f"{frozen[:3]}. Received: {len(frozen)} frozen weights")
        for x, y in context.pairs():
            grads = backend.current().model_gradients(
                model, loss, x, y, variables)
            size = len(keras.tree.flatten(y)[0])  # a mean over the chunk
            for variable, grad in zip(variables, grads):
                if grad is not None:
                    totals[id(variable)] += size * np.asarray(
                        keras.ops.convert_to_numpy(grad), np.float64)
        products = {key: totals[key] * np.asarray(v.numpy(), np.float64)
                    for key, v in ((id(v), v) for v in variables)}
        return {g.name: np.abs(unit_sums(context.analysis, g, products))
                for g in groups}


def _compiled_loss(model):
    loss = getattr(model, "loss", None)
    if loss is None:
        raise ValueError(
            "score='taylor' takes the gradient of the loss the model was "
            "compiled with; compile the model first (model.compile(loss="
            f"...)). Received: model {model.name!r}, not compiled")
    if isinstance(loss, (dict, list, tuple)):
        raise ValueError(
            "score='taylor' needs one loss; the model was compiled with "
            f"{type(loss).__name__} of losses")
    return keras.losses.get(loss)


def _variables(analysis, groups):
    found = {}
    for group in groups:
        for piece in analysis.slices_of(group._root):
            if piece.counted:
                found[id(piece.variable)] = piece.variable
    return list(found.values())


def unit_sums(analysis, group, arrays):
    """Per unit of `group`, the sum of `arrays[id(variable)]` over its
    counted slices (signed)."""
    total = np.zeros(group.size)
    for piece in analysis.slices_of(group._root):
        if not piece.counted or id(piece.variable) not in arrays:
            continue
        rows = np.moveaxis(arrays[id(piece.variable)], piece.axis, 0)
        rows = rows[piece.indices].reshape(len(piece.units), -1)
        np.add.at(total, piece.units, rows.sum(axis=1))
    return total


class Activation(Score):
    name, data = "activation", "inputs"

    def __call__(self, context, groups):
        readers = {}
        for group in groups:
            for piece in _incoming(context.analysis, group):
                layer, axis = _consumer(context, piece.variable,
                                        piece.axis)
                if layer is not None:
                    readers.setdefault(id(layer), _Reader(layer, {}))
                    readers[id(layer)].axes[id(piece.variable)] = axis
        with _watching(readers.values()):
            for x in context.inputs():
                context.model(x, training=False)
        scores = {}
        for group in groups:
            energy = np.zeros(group.size)
            weight = np.zeros(group.size)
            seen = False
            for piece in _incoming(context.analysis, group):
                layer, _ = _consumer(context, piece.variable, piece.axis)
                if layer is None or id(layer) not in readers:
                    continue
                squares = readers[id(layer)].squares
                if squares is None:
                    continue
                seen = True
                rows = squares[piece.indices].reshape(len(piece.units), -1)
                np.add.at(energy, piece.units, rows.sum(axis=1))
                value = np.moveaxis(np.asarray(
                    piece.variable.numpy(), np.float64), piece.axis, 0)
                value = value[piece.indices].reshape(len(piece.units), -1)
                np.add.at(weight, piece.units, np.sum(value ** 2, axis=1))
            if not seen:
                raise ValueError(
                    f"score='activation' found no layer that reads the "
                    f"units of group '{group.name}' (a Dense, EinsumDense or "
                    "convolution); rank it with score='l2' or 'taylor'.")
            scores[group.name] = np.sqrt(energy) * np.sqrt(weight)
        return scores


def _incoming(analysis, group):
    """The slices where the group's units are read: a kernel's input axis
    (axis 0 of a Dense or EinsumDense kernel whose other axes are
    outputs, the input-channel axis of a convolution)."""
    for piece in analysis.slices_of(group._root):
        if piece.counted and len(piece.variable.shape) >= 2 and (
                _input_axis(piece.variable, piece.axis)):
            yield piece


def _input_axis(variable, axis):
    rank = len(variable.shape)
    path = variable.path
    if path.endswith("/kernel") and rank == 2:
        return axis == 0
    if path.endswith("attention_output/kernel"):
        return axis == 0
    if path.endswith("/kernel") and rank in (3, 4, 5) and not (
            "query" in path or "key" in path or "value" in path):
        return axis == rank - 2
    return False


class _Reader:
    """Accumulates the sum of squares of a layer's input along the axis
    that its kernel's `axis` reads."""

    def __init__(self, layer, axes):
        self.layer, self.axes, self.squares = layer, axes, None
        self.axis = None

    def read(self, value):
        value = np.asarray(keras.ops.convert_to_numpy(value), np.float64)
        axis = self.axis % value.ndim
        other = tuple(a for a in range(value.ndim) if a != axis)
        sums = np.sum(value ** 2, axis=other)
        self.squares = sums if self.squares is None else self.squares + sums


def _consumer(context, variable, axis):
    """The layer whose kernel is `variable`, and the axis of its input
    that the kernel's `axis` reads; `(None, None)` when not known."""
    layer = context.owner(variable)
    if layer is None:
        return None, None
    name = type(layer).__name__
    rank = len(variable.shape)
    if name == "Dense" and axis == 0:
        return layer, -1
    if name == "EinsumDense":
        equation = layer.equation
        inputs, _, _ = equation.partition("->")
        first, _, kernel = inputs.partition(",")
        letter = kernel[axis]
        if letter in first:
            return layer, first.index(letter) - len(first)
    if name.startswith("Conv") and axis == rank - 2:
        return layer, -1
    return None, None


def _replace_call(layer, make):
    """Sets `layer.call` on the instance to `make(original call)`;
    returns what to restore."""
    before = vars(layer).get("call")
    layer.call = make(layer.call)
    return layer, before


def _restore_calls(saved):
    for layer, before in reversed(saved):
        if before is None:
            vars(layer).pop("call", None)
        else:
            layer.call = before


class _watching:
    """Lets each reader see its layer's first input on every call, for the
    duration of a `with` block (each layer's own `call` restored after,
    error or not)."""

    def __init__(self, readers):
        self.readers = list(readers)
        self.saved = []

    def __enter__(self):
        for reader in self.readers:
            reader.axis = next(iter(reader.axes.values()))

            def make(original, _reader=reader):
                def call(*args, **kwargs):
                    _reader.read(args[0])
                    return original(*args, **kwargs)
                return call
            self.saved.append(_replace_call(reader.layer, make))
        return self

    def __exit__(self, *error):
        _restore_calls(self.saved)
        return False


def block_influence(context, blocks, pairs=False):
    """Per block, the mean over tokens of 1 - cos(its input, its output).
    `pairs`: the data is `(x, y)` batches (a Taylor score's)."""
    layers = [context.owner_of_block(block) for block in blocks]
    sums = [[0.0, 0] for _ in blocks]
    for index, layer in enumerate(layers):
        if layer is None or layers.index(layer) != index:
            raise ValueError(
                f"The influence of block {index} ('{blocks[index].layer}') "
                "needs a layer that holds that block alone. Received: "
                f"{'no such layer' if layer is None else 'a shared one'}; "
                "rank blocks without data instead.")

    def wrap(index):
        def make(original):
            def call(*args, **kwargs):
                out = original(*args, **kwargs)
                first = out[0] if isinstance(out, (tuple, list)) else out
                a = np.asarray(keras.ops.convert_to_numpy(args[0]),
                               np.float64)
                b = np.asarray(keras.ops.convert_to_numpy(first), np.float64)
                a, b = a.reshape(-1, a.shape[-1]), b.reshape(-1, b.shape[-1])
                cos = np.sum(a * b, 1) / np.maximum(
                    np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1),
                    1e-12)
                sums[index][0] += float(np.sum(1.0 - cos))
                sums[index][1] += len(cos)
                return out
            return call
        return make
    saved = []
    try:
        for index, layer in enumerate(layers):
            saved.append(_replace_call(layer, wrap(index)))
        batches = ((x for x, _ in context.pairs()) if pairs
                   else context.inputs())
        for x in batches:
            context.model(x, training=False)
    finally:
        _restore_calls(saved)
    return np.array([total / max(count, 1) for total, count in sums])


class Context:
    """What a score reads: the model, its analysis and the data."""

    def __init__(self, model, analysis, data):
        self.model, self.analysis, self.data = model, analysis, data
        self._owners = None

    def _layers(self):
        """Every layer inside the model, found through the attributes
        that hold them (a block's sublayers, a list of blocks)."""
        seen, stack, found = set(), list(self.model.layers), []
        while stack:
            layer = stack.pop()
            if id(layer) in seen or not isinstance(layer, keras.layers.Layer):
                continue
            seen.add(id(layer))
            found.append(layer)
            for value in vars(layer).values():
                items = value if isinstance(value, (list, tuple)) else [value]
                stack.extend(v for v in items
                             if isinstance(v, keras.layers.Layer))
        return found

    def owner(self, variable):
        if self._owners is None:
            self._owners = {}
            for layer in self._layers():
                kernel = None
                try:
                    kernel = getattr(layer, "kernel", None)
                except (AttributeError, ValueError):
                    pass
                if isinstance(kernel, keras.Variable):
                    self._owners[id(kernel)] = layer
        return self._owners.get(id(variable))

    def owner_of_block(self, block):
        wanted = {id(v) for v in block.weights}
        best = None
        for layer in self._layers():
            if {id(v) for v in layer.weights} == wanted:
                if best is None or len(layer.weights) == len(wanted):
                    best = layer
                    break
        return best

    def _batches(self):
        data = self.data
        if data is None:
            raise ValueError("This score needs data. Received: data=None")
        if isinstance(data, keras.utils.PyDataset) or hasattr(
                data, "element_spec"):  # a tf.data.Dataset
            for batch in data:
                yield batch, True
            return
        yield data, False

    def inputs(self):
        """The model inputs of each batch, in chunks of `CHUNK`."""
        for batch, from_dataset in self._batches():
            if from_dataset and isinstance(batch, tuple):
                batch = batch[0]
            yield from _chunks(batch)

    def pairs(self):
        """`(x, y)` per batch, in chunks of `CHUNK`."""
        for batch, _ in self._batches():
            if not (isinstance(batch, tuple) and len(batch) in (2, 3)):
                raise ValueError(
                    "score='taylor' needs (x, y) pairs: data=(x, y), or a "
                    "dataset of (x, y) batches. Received: data of type "
                    f"{type(batch).__name__}")
            x, y = batch[0], batch[1]
            for part_x, part_y in zip(_chunks(x), _chunks(y)):
                yield part_x, part_y


def _chunks(batch):
    """`batch` split along its first axis into pieces of at most CHUNK."""
    leaves = keras.tree.flatten(batch)
    size = int(np.shape(leaves[0])[0]) if leaves else 0
    if size <= CHUNK:
        yield batch
        return
    for start in range(0, size, CHUNK):
        yield keras.tree.map_structure(
            lambda a, s=start: a[s:s + CHUNK], batch)


SCORES = {score.name: score for score in (
    Magnitude("l1", 1), Magnitude("l2", 2), Lamp(), Taylor(), Activation())}
