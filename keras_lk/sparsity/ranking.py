"""Allocation across unit groups: `SparsityTarget(structure="units",
allocation="global" | "adaptive")`, a policy of `units.UnitController`.

Instead of every group losing the same fraction (`units.Uniform`), all
the covered units are ranked together and the lowest go, wherever they
are:

- `"global"`: by their RMS weight, `||w_u|| / sqrt(n_g)` (`n_g`: the
  weights in a unit of group `g`), the structured form of one threshold on
  `|w|`. Groups whose weights are small (a wide fan-in) lose more units.
- `"adaptive"`: by LAMP score (Lee et al., 2021, "Layer-adaptive sparsity
  for the magnitude-based pruning"): within its group, a unit's squared
  norm divided by the sum of the squared norms of the units at least as
  large. The score has no scale, so groups compare without calibration;
  a group whose norms are spread out keeps its large units and loses its
  small ones, one whose norms are even loses few.

In the step, with `N` covered units and `s(t)` the scheduled fraction:
- at most `floor(s(t) * N)` units are zero, the lowest ranked; every
  group's largest unit is never zeroed. With a MACs target (`target_macs`)
  `s(t)` is a share of the multiply-accumulates: the lowest ranked units
  are zeroed as long as removing them removes no more than that share,
  counted with `MacsByCounts` (exact: a polynomial of the units each group
  keeps), and `keep` is what is left once the lowest ranked units remove
  the target share;
- k = 0 zeroes exactly those (gradual magnitude pruning of units, by
  count);
- k > 0 takes each group's proximal step with `t_g = lr * exp(log_scale) *
  u_g^(2 - k)` (`u_g`: the group's scale, so that one strength zeroes the
  same relative norm everywhere); every `CONTROL_EVERY` steps the one
  `log_scale` moves with the fraction of all units that are zero;
- the `keep` highest ranked units take no step;
- at `end_step` exactly `keep` units stay, the highest ranked, at least one
  per group.

The groups' state entries all hold the same shared values.
"""

import math

import numpy as np
from keras import ops

from keras_lk.sparsity.units import ranks

RANKED = ("global", "adaptive")
_TINY = float(np.finfo("float32").tiny)


def unit_weights(group):
    """The number of weights in one unit of `group` (a `PenaltyGroup`)."""
    total = 0
    for piece in group.slices:
        shape = piece.variable.shape
        across = math.prod(shape) // max(shape[piece.axis], 1)
        total += int(np.count_nonzero(piece.positions < group.size)) * across
    return max(total / group.size, 1.0)


def lamp(norms):
    """Each unit's LAMP score: its squared norm over the sum of the squared
    norms of the units ranked at or above it (1 for the largest; 0 for a
    zero unit)."""
    squares = ops.square(norms)
    order = ops.argsort(squares)
    ordered = ops.take(squares, order)
    suffix = ops.flip(ops.cumsum(ops.flip(ordered, axis=0)), axis=0)
    scores = ordered / ops.maximum(suffix, _TINY)
    return ops.take(scores, ops.argsort(order))


class Ranked:
    """One ranking of `plan`'s units across groups (see the module
    docstring): `allocation` "global" or "adaptive"; `macs`, with a MACs
    target, the `MacsByCounts` of `plan.groups` in their order."""

    # k = 0 zeroes exactly the allowed count: no threshold.
    thresholds = False

    def __init__(self, plan, allocation, macs=None):
        if allocation not in RANKED:
            raise ValueError(f"allocation must be one of {RANKED}. "
                             f"Received: {allocation!r}")
        self.name = allocation
        self.plan = plan
        self.root_weights = [math.sqrt(unit_weights(g)) for g in plan.groups]
        self.total = sum(g.size for g in plan.groups)
        self.macs = macs
        self._scales = None
        self._steered = None
        if macs is not None:
            self.membership = ops.convert_to_tensor(np.concatenate([
                np.tile(np.eye(len(plan.groups), dtype="float32")[i],
                        (g.size, 1)) for i, g in enumerate(plan.groups)]))
            self.linear = ops.convert_to_tensor(macs.linear, "float32")
            self.quadratic = ops.convert_to_tensor(macs.quadratic, "float32")

    def per_group(self, scheduled, count):
        # Every group's entry holds the shared target and start.
        return [scheduled[0]] * count

    def removed(self, counts):
        """The share of the MACs removed with `counts[..., g]` units of each
        group removed."""
        return ops.matmul(counts, self.linear) + ops.sum(
            ops.matmul(counts, self.quadratic) * counts, axis=-1)

    def prefix_removed(self, rank):
        """`[N + 1]`: the share of the MACs removed with the `m` lowest
        ranked units removed, for m = 0..N."""
        order = ops.argsort(ops.concatenate(rank))
        counts = ops.cumsum(ops.take(self.membership, order, axis=0),
                            axis=0)
        counts = ops.concatenate([ops.zeros((1, len(self.plan.groups)),
                                            "float32"), counts])
        return self.removed(counts)

    def budget(self, rank, scheduled, entries):
        """`(count, keep)`: how many of the lowest ranked units may be zero
        now, and how many units stay once the target is reached."""
        total = float(self.total)
        limit = self.total - len(self.plan.groups)
        if self.macs is None:
            return (ops.minimum(ops.floor(scheduled * total + 1e-6), limit),
                    entries[0].keep)
        removed = self.prefix_removed(rank)[:limit + 1]
        count = ops.sum(ops.cast(ops.less_equal(
            removed[1:], scheduled + 1e-6), "float32"))
        # The fewest units whose removal reaches the target (all but one
        # per group at most).
        reach = ops.minimum(ops.sum(ops.cast(ops.less(
            removed, entries[0].target - 1e-6), "float32")), float(limit))
        return count, total - reach

    def zero_share(self, afters):
        """The schedule's measure of the zeros: the fraction of units that
        are zero, or with a MACs target the share of the MACs they hold."""
        zeros = ops.stack([ops.sum(ops.cast(ops.equal(a, 0), "float32"))
                           for a in afters])
        if self.macs is None:
            return ops.sum(zeros) / float(self.total)
        return self.removed(zeros)

    def scores(self, norms):
        """Each group's scores (comparable across groups)."""
        if self.name == "global":
            return [n / c for n, c in zip(norms, self.root_weights)]
        return [lamp(n) for n in norms]

    def scales(self, norms):
        """Each group's scale `u_g` for the shared strength."""
        if self.name == "global":
            return [ops.convert_to_tensor(c, "float32")
                    for c in self.root_weights]
        return [ops.sqrt(ops.maximum(ops.mean(ops.square(n)), _TINY))
                for n in norms]

    def global_ranks(self, norms):
        """Every unit's rank across groups, lowest score first, each
        group's largest unit last; split back by group."""
        flat = ops.concatenate([
            ops.where(ops.equal(ranks(n), n.shape[0] - 1), float("inf"), s)
            for n, s in zip(norms, self.scores(norms))])
        return self.split(ranks(flat))

    def split(self, flat):
        parts, start = [], 0
        for group in self.plan.groups:
            parts.append(flat[start:start + group.size])
            start += group.size
        return parts

    # The policy.
    def prepare(self, norms, entries, learning_rate):
        self._scales = self.scales(norms)
        # One strength for all: the shared log_scale, held by every entry.
        self._steered = learning_rate * ops.exp(entries[0].log_scale)

    def bounds(self, norms, scheduled, entries):
        rank = self.global_ranks(norms)
        count, keep = self.budget(rank, scheduled[0], entries)
        total = float(self.total)
        return [(ops.less(r, count), ops.greater_equal(r, total - keep))
                for r in rank]

    def strength(self, index, group, entry, learning_rate):
        if group.k == 0:
            return None
        return self._steered * ops.power(self._scales[index], 2.0 - group.k)

    def kept(self, afters, scheduled, entries):
        after_rank = self.global_ranks(afters)
        _, keep = self.budget(after_rank, scheduled[0], entries)
        total = float(self.total)
        return [ops.logical_and(ops.greater_equal(r, total - keep),
                                ops.greater(a, 0))
                for a, r in zip(afters, after_rank)]

    def zeros(self, afters):
        return [self.zero_share(afters)] * len(afters)
