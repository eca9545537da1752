"""`unit_groups`: the units of a model that must be removed together."""

import dataclasses

import numpy as np

from keras_lk.structure.analysis import analyze, unit_norms
from keras_lk.structure.channels import UNKNOWN


@dataclasses.dataclass(frozen=True)
class UnitGroup:
    """Units that are removed together: one output unit, channel or head
    with every weight slice, in every layer, that belongs to it.

    Attributes:
        name: The first layer that makes the group's units (a Dense, a
            convolution, a recurrent layer, `"<attention>/heads"`...).
        size: How many units it has.
        layers: The names of the layers whose weights it slices.
        paths: The paths of the variables it slices (`variable.path`).
        removable: Whether removing a unit leaves the model's outputs
            exactly as they are once its slices are zero.
        reasons: Why it is not removable (empty when it is).
        kind: "units" (output units, channels, feed-forward units),
            "heads" (attention heads, or KV groups with their query
            heads) or "blocks" (whole residual blocks: unit i is the i-th
            block, zero when its output projections are).

    A unit counts as zero when every slice of it is exactly zero: the
    producing kernel's output slice and bias, the BatchNormalization scale
    and offset, and the consumers' input slices. A BatchNormalization's
    moving statistics are removed with it but do not count.

    Examples:

        >>> import keras, keras_lk
        >>> inputs = keras.Input((8,), name="features")
        >>> hidden = keras.layers.Dense(16, "relu", name="hidden")(inputs)
        >>> model = keras.Model(inputs, keras.layers.Dense(2)(hidden))
        >>> group = keras_lk.unit_groups(model)[1]
        >>> group.name, group.size, group.removable
        ('hidden', 16, True)
        >>> group.norms().shape
        (16,)
    """

    name: str
    size: int
    layers: tuple
    paths: tuple
    removable: bool
    reasons: tuple
    _analysis: object = dataclasses.field(repr=False, compare=False)
    _root: int = dataclasses.field(repr=False, compare=False)
    kind: str = "units"

    @property
    def reason(self):
        """The first reason it is kept, or None when it is removable."""
        return self.reasons[0] if self.reasons else None

    def norms(self, p=2):
        """Each unit's norm over the group's slices: p = 1, 2 or inf."""
        if p not in (1, 2, np.inf):
            raise ValueError("Invalid value for argument `p`. Expected 1, 2 "
                             f"or inf. Received: p={p!r}")
        return unit_norms(self._analysis, self._root, self.size, p)

    def live(self):
        """How many units have a nonzero slice."""
        return int(np.count_nonzero(self.norms(np.inf)))


def build_groups(analysis, blocks=False):
    """The `UnitGroup`s of an analysis, every space that slices a weight;
    the "blocks" group only with `blocks` (the penalties and the training
    targets act on the units inside the blocks)."""
    spaces = analysis.spaces
    found, names = [], set()
    by_root = {}
    for piece in spaces.slices:
        by_root.setdefault(spaces.root(piece.space), []).append(piece)
    for root in analysis.roots():
        pieces = by_root.get(root)
        if not pieces or spaces.size[root] == 0:
            continue
        kind = spaces.kinds.get(root) or (
            "heads" if spaces.producer[root].endswith("heads") else "units")
        if kind == "blocks" and not blocks:
            continue
        name = spaces.producer[root]
        while name in names:
            name += "'"
        names.add(name)
        reasons = tuple(dict.fromkeys(r for _, r in spaces.reasons_of(root)))
        found.append(UnitGroup(
            name=name, size=spaces.size[root],
            layers=tuple(dict.fromkeys(p.layer for p in pieces)),
            paths=tuple(dict.fromkeys(p.variable.path for p in pieces)),
            removable=not reasons, reasons=reasons, kind=kind,
            _analysis=analysis, _root=root))
    return found


def unknown_reasons(group):
    """The reasons that name a layer keras_lk cannot rebuild."""
    spaces = group._analysis.spaces
    return [r for kind, r in spaces.reasons_of(group._root)
            if kind == UNKNOWN]


def unit_groups(model):
    """The coupled unit groups of a built Functional or Sequential model.

    Read from the model's graph: each output unit of a Dense, convolution,
    recurrent layer or Embedding, each attention head, with every slice that
    belongs to it across layers: its bias, the following BatchNormalization,
    the consumers' input slices (through Flatten and Concatenate offsets),
    the partners an Add or Multiply joins it to (residual streams,
    squeeze-and-excitation gates), and a depthwise convolution's channel.
    A group that cannot be removed exactly (the model's inputs and outputs,
    a LayerNormalization across channels, a layer keras_lk does not know)
    is listed with `removable=False` and the reasons.

    Args:
        model: A built `keras.Model` with a graph (Functional or
            Sequential). A subclassed model raises a ValueError.

    Returns:
        A list of `UnitGroup`, in the order the graph makes them.

    Examples:

        >>> import keras, keras_lk
        >>> model = keras.Sequential([
        ...     keras.Input((8, 8, 3), name="pixels"),
        ...     keras.layers.Conv2D(4, 3, name="conv"),
        ...     keras.layers.BatchNormalization(name="bn"),
        ...     keras.layers.Flatten(),
        ...     keras.layers.Dense(2, name="head")])
        >>> groups = keras_lk.unit_groups(model)
        >>> [(g.name, g.size, g.removable) for g in groups]
        [('pixels', 3, False), ('conv', 4, True), ('head', 2, False)]
        >>> groups[1].layers
        ('conv', 'bn', 'head')
    """
    return build_groups(analyze(model), blocks=True)
