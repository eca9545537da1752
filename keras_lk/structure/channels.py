"""Channel spaces: which unit of which group each channel of a tensor is.

A *space* is a set of units that must go together: the output units of one
layer, joined (by a union) with every other space an Add, a Multiply or a
Concatenate along another axis ties it to. A tensor's last axis is a
`Channels` map: for each position, its space and its unit. A Concatenate
along the last axis puts maps side by side, a Flatten repeats one, a
depthwise convolution with multiplier m repeats each position m times.

Every weight slice that belongs to a unit is recorded as a `Slice`: a
variable, an axis and, per row, the unit and the indices along that axis.
"""

import dataclasses

import numpy as np

# Reasons a space is kept. "exact": removing it would change the outputs.
# "unknown": a layer keras_lk does not know touches it.
EXACT, UNKNOWN = "exact", "unknown"


@dataclasses.dataclass
class Slice:
    """The rows of one variable along one axis that belong to units of one
    space: `indices[r]` are the indices of unit `units[r]`. `counted`:
    whether the slice takes part in the unit's norm (a BatchNormalization's
    moving statistics do not)."""

    space: int
    layer: str
    variable: object
    axis: int
    units: np.ndarray
    indices: np.ndarray
    counted: bool = True


@dataclasses.dataclass
class Edit:
    """A config entry of `layer` set from the live positions of `channels`
    when the model is rebuilt: `kind` is "count" (an int), "path" (an int
    inside nested config dicts, `key` their keys), "last" (the last entry
    of a shape), or "output_shape" (MultiHeadAttention's)."""

    layer: str
    key: object
    kind: str
    channels: object
    also: dict = dataclasses.field(default_factory=dict)
    block: object = None


@dataclasses.dataclass(frozen=True)
class Channels:
    """The last axis of one tensor: space and unit per position."""

    space: np.ndarray
    unit: np.ndarray

    def __len__(self):
        return len(self.space)

    def repeat(self, times):
        """Each position `times` times in a row (a depthwise convolution)."""
        return Channels(np.repeat(self.space, times),
                        np.repeat(self.unit, times))

    def tile(self, times):
        """The whole map `times` times (a Flatten of `times` positions)."""
        return Channels(np.tile(self.space, times), np.tile(self.unit, times))

    @staticmethod
    def join(maps):
        return Channels(np.concatenate([m.space for m in maps]),
                        np.concatenate([m.unit for m in maps]))


class Spaces:
    """The union-find of spaces, with their slices, edits and reasons."""

    def __init__(self):
        self.parent, self.size, self.producer = [], [], []
        self.reasons = {}
        self.slices, self.edits = [], []
        # A space whose units are positions of other spaces' (an Add of one
        # layer's output with a Concatenate): root -> resolved `Channels`.
        self.alias = {}
        # Rules' `describe.Block`s, and the kind of a space that is not
        # plain units ("blocks").
        self.blocks, self.kinds = [], {}

    def new(self, size, producer, reason=None, kind=EXACT):
        """A new space of `size` units made by layer `producer`."""
        self.parent.append(len(self.parent))
        self.size.append(int(size))
        self.producer.append(producer)
        index = len(self.parent) - 1
        if reason:
            self.reasons.setdefault(index, []).append((kind, reason))
        return Channels(np.full(size, index), np.arange(size))

    def root(self, space):
        while self.parent[space] != space:
            self.parent[space] = self.parent[self.parent[space]]
            space = self.parent[space]
        return space

    def union(self, a, b):
        a, b = self.root(a), self.root(b)
        if a != b:
            first, second = min(a, b), max(a, b)
            self.parent[second] = first
            self.reasons.setdefault(first, []).extend(
                self.reasons.pop(second, []))

    def resolve(self, channels):
        """`channels` with each position as (root space, unit), through
        the aliases."""
        space, unit = channels.space.copy(), channels.unit.copy()
        while True:
            unique, inverse = np.unique(space, return_inverse=True)
            roots = np.array([self.root(int(s)) for s in unique], dtype=int)
            space = roots[inverse.reshape(-1)] if len(space) else space
            aliased = [int(r) for r in set(roots.tolist())
                       if r in self.alias]
            if not aliased:
                return Channels(space, unit)
            for root in aliased:
                target = self.alias[root]
                mask = space == root
                picked = unit[mask]
                space[mask], unit[mask] = (target.space[picked],
                                           target.unit[picked])

    def whole(self, channels):
        """The one space `channels` is, unit for unit, or None."""
        if not len(channels):
            return None
        channels = self.resolve(channels)
        roots = set(channels.space.tolist())
        if len(roots) != 1:
            return None
        root = roots.pop()
        if (self.size[root] == len(channels)
                and np.array_equal(channels.unit, np.arange(len(channels)))):
            return root
        return None

    def tie(self, maps, layer):
        """Makes the positions of `maps` the same units (an Add). Whole
        spaces are joined; a whole space added to a map of several spaces
        (a Concatenate's) becomes an alias of that map, unit for position.
        Anything else is kept, with the reason."""
        maps = [self.resolve(m) for m in maps]
        spaces = [self.whole(m) for m in maps]
        if all(s is not None for s in spaces):
            for space in spaces[1:]:
                self.union(spaces[0], space)
            return
        others = [m for m, s in zip(maps, spaces) if s is None]
        same = all(np.array_equal(m.space, others[0].space)
                   and np.array_equal(m.unit, others[0].unit)
                   for m in others)
        target = set(others[0].space.tolist())
        if same and not any(s in target for s in spaces if s is not None):
            for space in {s for s in spaces if s is not None}:
                self.alias[space] = others[0]
                for kind, reason in self.reasons.pop(space, []):
                    self.keep(others[0], reason, kind)
            return
        for m in maps:
            self.keep(m, f"'{layer}' joins channels that come from several "
                         "layers in different orders")

    def keep(self, channels, reason, kind=EXACT):
        """Marks every space of `channels` as not removable."""
        for space in set(self.resolve(channels).space.tolist()):
            self.reasons.setdefault(space, []).append((kind, reason))

    def finish(self):
        """Rewrites every slice and edit on root spaces, through the
        aliases: after it, a slice's space is its group's root."""
        slices = []
        for piece in self.slices:
            where = self.resolve(Channels(
                np.full(len(piece.units), piece.space), piece.units))
            for space in np.unique(where.space):
                mask = where.space == space
                slices.append(dataclasses.replace(
                    piece, space=int(space), units=where.unit[mask],
                    indices=piece.indices[mask]))
        self.slices = slices
        for edit in self.edits:
            edit.channels = self.resolve(edit.channels)

    def record(self, channels, layer, variable, axis, indices, counted=True):
        """Records `variable`'s slices along `axis` for the positions of
        `channels`: `indices(positions)` gives each position's indices, an
        array of shape (len(positions), k)."""
        positions = np.arange(len(channels))
        rows = np.asarray(indices(positions)).reshape(len(positions), -1)
        for space in sorted(set(channels.space.tolist())):
            mask = channels.space == space
            self.slices.append(Slice(
                space=space, layer=layer, variable=variable,
                axis=axis % len(variable.shape), units=channels.unit[mask],
                indices=rows[mask], counted=counted))

    def edit(self, layer, key, channels, kind="count"):
        self.edits.append(Edit(layer, key, kind, channels))

    def reasons_of(self, space):
        return self.reasons.get(self.root(space), [])
