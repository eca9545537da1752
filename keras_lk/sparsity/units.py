"""Steering whole units to a target: `SparsityTarget(structure="units")`.

Per unit group, inside the compiled train step:
- k > 0: the group proximal step's strength is `lr * exp(log_scale)`;
  every `CONTROL_EVERY` steps `log_scale` moves up when fewer units are
  zero than the schedule asks, down when more are;
- k = 0: gradual magnitude pruning of units: every `CONTROL_EVERY` steps
  the threshold on the unit norms rises to the scheduled quantile (it
  never falls), and every step zeroes the units up to it.
- The units that would stay if the pattern were locked now (the `keep`
  largest norms) take no step: only the others are driven to zero, and
  the survivors are not shrunk (as OTO's half-space projected step).
- No more units are zeroed than the schedule asks (a zero unit gets no
  gradient and never returns, so an overshoot could not be undone), and
  never the last one.
- At `end_step` the pattern is locked: exactly `keep` units stay (the
  largest), the rest are zero and stay zero while the others fine-tune.

The state is among the optimizer's variables (`UnitState`), so it is
carried by JAX's stateless step, BackupAndRestore and `.keras` files.
"""

import math

import numpy as np
from keras import ops

from keras_lk import tags
from keras_lk.sparsity.schedule import polynomial
from keras_lk.sparsity.state import RunState, with_field
from keras_lk.structure.analysis import analyze
from keras_lk.structure.flops import total_macs
from keras_lk.structure.group_prox import unit_scales
from keras_lk.structure.groups import build_groups
from keras_lk.structure.prune import kept_count
from keras_lk.structure.surgery import dead_units

CONTROL_EVERY = 2
GAIN = 5.0
MAX_MOVE = 0.5
MAX_LOG_SCALE = 30.0


class UnitState:
    """Each group's `[log_scale, threshold, target, start, keep]` vector and
    kept-units mask, and the run (`sparsity.state.RunState`)."""

    LOG_SCALE, THRESHOLD, TARGET, START, KEEP = range(5)

    def __init__(self, vectors, masks, run):
        self.vectors = vectors
        self.masks = masks
        self.run = run

    @classmethod
    def build(cls, optimizer, plan):
        vectors, masks = [], []
        for index, group in enumerate(plan.groups):
            name = f"units_{index}"
            vectors.append(optimizer.add_variable((5,), "zeros", "float32",
                                                  name=f"{name}_state"))
            masks.append(optimizer.add_variable((group.size,), "ones", "bool",
                                                name=f"{name}_kept"))
        return cls(vectors, masks, RunState.build(optimizer, "units"))

    def fits(self, plan):
        """Whether this state was built for `plan`'s groups."""
        return len(self.masks) == len(plan.groups) and all(
            tuple(m.shape) == (g.size,) for m, g in zip(self.masks,
                                                        plan.groups))


def kept_units(norms, keep):
    """The mask of the `keep` largest nonzero norms."""
    order = ops.flip(ops.sort(norms), axis=0)
    keep = ops.cast(ops.clip(keep, 1, norms.shape[0]), "int32")
    threshold = ops.take(order, keep - 1)
    return ops.logical_and(ops.greater_equal(norms, threshold),
                           ops.greater(norms, 0))


class UnitController:
    """Steers `plan`'s groups toward their targets, with `state`."""

    def __init__(self, plan, state):
        self.plan = plan
        self.state = state
        self.heartbeat = state.run.ensure_heartbeat()
        self.window = 1

    # On the host.
    def start_run(self, begin, end, targets, keeps, starts, log_scales,
                  settings):
        for index in range(len(self.plan.groups)):
            self.state.vectors[index].assign(np.array(
                [log_scales[index], 0.0, targets[index], starts[index],
                 keeps[index]], "float32"))
            self.state.masks[index].assign(
                np.ones(self.plan.groups[index].size, bool))
        self.state.run.reset(begin, end, settings)

    def finish_run(self):
        self.state.run.finish()

    # In the step.
    def engaged(self, iterations):
        return self.state.run.engaged(iterations, self.window)

    def scheduled(self, iterations):
        """Each group's scheduled fraction of zero units."""
        run = self.state.run
        vectors = ops.stack([v.value for v in self.state.vectors])
        return polynomial(iterations, run.begin, run.end,
                          vectors[:, UnitState.TARGET],
                          vectors[:, UnitState.START])

    def step(self, learning_rate, iterations, value_of):
        """`(new weights, new group vectors, new masks, new run vector)`
        after this step's group proximal step."""
        plan, state = self.plan, self.state
        run = state.run
        engaged = self.engaged(iterations)
        locked = run.locked
        steer = ops.logical_and(engaged, ops.logical_not(locked))
        locking = ops.logical_and(steer, ops.greater_equal(
            ops.cast(iterations, "int64"), run.end))
        control = ops.logical_and(steer, ops.equal(
            iterations % CONTROL_EVERY, 0))
        scheduled = self.scheduled(iterations)
        norms = plan.norms(value_of)
        lr = ops.cast(learning_rate, "float32")
        scales, vectors, masks = [], [], []
        for index, (group, norm) in enumerate(zip(plan.groups, norms)):
            vector = state.vectors[index].value
            mask = state.masks[index].value
            if group.k == 0:
                steered = 0.5 * ops.square(vector[UnitState.THRESHOLD])
            else:
                steered = lr * ops.exp(vector[UnitState.LOG_SCALE])
            t = ops.where(steer, steered, group.strength(lr))
            scale = unit_scales(norm, t, group.k)
            # While steering, no more units are zeroed than the schedule
            # asks: a zero unit gets no gradient and never comes back, so
            # an overshoot could not be undone. Those the step would zero
            # beyond it, the largest unit among them, skip the step.
            allowed = ops.less(ranks(norm), ops.minimum(
                ops.floor(scheduled[index] * group.size + 1e-6),
                group.size - 1.0))
            spared = ops.logical_and(steer, ops.logical_and(
                ops.equal(scale, 0), ops.logical_not(allowed)))
            # The units that would stay if the pattern were locked now
            # (the `keep` largest) take no step: the penalty drives only
            # the others, the redundant ones, to zero (as OTO's
            # half-space step does), and the survivors are not shrunk.
            rank = ranks(norm)
            spared = ops.logical_or(spared, ops.logical_and(
                steer, ops.greater_equal(rank, group.size
                                         - vector[UnitState.KEEP])))
            scale = ops.where(spared, ops.ones_like(scale), scale)
            after = norm * scale
            kept = kept_units(after, vector[UnitState.KEEP])
            mask = ops.where(locking, kept, mask)
            held = ops.logical_and(engaged, ops.logical_or(locked, locking))
            scale = ops.where(held, ops.cast(mask, "float32"), scale)
            # The control law.
            zeros = ops.mean(ops.cast(ops.equal(after, 0), "float32"))
            move = ops.clip(GAIN * (scheduled[index] - zeros), -MAX_MOVE,
                            MAX_MOVE)
            log_scale = ops.clip(vector[UnitState.LOG_SCALE] + move,
                                 -MAX_LOG_SCALE, MAX_LOG_SCALE)
            threshold = vector[UnitState.THRESHOLD]
            if group.k == 0:
                threshold = ops.maximum(threshold, quantile(
                    norm, scheduled[index]))
            new_vector = with_field(with_field(
                vector, UnitState.LOG_SCALE, log_scale),
                UnitState.THRESHOLD, threshold)
            vectors.append(ops.where(control, new_vector, vector))
            masks.append(mask)
            scales.append(scale)
        weights = plan.scaled(scales, value_of)
        return weights, vectors, masks, [run.with_locked(locking)]


def ranks(norms):
    """Each unit's rank by norm, smallest first (0), as float32."""
    order = ops.argsort(norms)
    return ops.cast(ops.argsort(order), "float32")


def quantile(norms, fraction):
    """The norm that zeroes `fraction` of the units (0 for none)."""
    ordered = ops.sort(norms)
    count = ops.cast(ops.round(fraction * norms.shape[0]), "int32")
    return ops.where(ops.greater(count, 0),
                     ops.take(ordered, ops.maximum(count - 1, 0)), 0.0)


def initial_log_scale(norms, target, span, learning_rate):
    """A first strength for k > 0: over the schedule the steps shrink a
    unit's norm by about the sum of their strengths; start where that sum
    reaches the target's quantile of the norms."""
    value = float(np.quantile(norms, target)) if len(norms) else 0.0
    if value <= 0 or learning_rate <= 0:
        return 0.0
    return min(max(math.log(value / span / learning_rate), -MAX_LOG_SCALE),
               MAX_LOG_SCALE)


def uniform_fraction(model, target_flops, names=None):
    """The one fraction of units that, removed from every group named (or
    every removable group), removes at least `target_flops` of `model`'s
    multiply-accumulates (`keras_lk.macs`), the least that does.

    Returns:
        `(fraction, {group: units removed}, fraction of the MACs left)`.
    """
    analysis = analyze(model)
    groups = {g.name: g for g in build_groups(analysis)
              if (g.name in names if names is not None else g.removable)}
    dense = total_macs(analysis, {})

    def removed(fraction):
        counts = {name: g.size - kept_count(g.size, fraction)
                  for name, g in groups.items()}
        dead = {groups[name]._root: set(range(count))
                for name, count in counts.items() if count}
        return counts, total_macs(analysis, dead) / max(dense, 1)

    goal = 1.0 - target_flops
    low, high = 0.0, 1.0 - 1e-9
    counts, left = removed(high)
    if left > goal + 1e-12:
        raise ValueError(
            f"target_flops={target_flops} cannot be reached by removing "
            "units: with one unit left in every covered group, "
            f"{left:.3f} of the multiply-accumulates remain. Covered groups: "
            f"{sorted(counts)}")
    for _ in range(40):
        middle = (low + high) / 2
        if removed(middle)[1] <= goal:
            high = middle
        else:
            low = middle
    counts, left = removed(high)
    return high, counts, left


class UnitRun:
    """The host side of `SparsityTarget(structure="units")`: the targets,
    the start of a run and what each epoch logs."""

    def __init__(self, model, optimizer, target, target_flops):
        plan = optimizer.unit_plan
        if plan is None:
            raise ValueError(
                "SparsityTarget(structure='units') steers the group penalty "
                "of keras_lk.attach(model, LkRegularizer(k, alpha, "
                "proximal=True), structure='units'); the model's weights "
                "carry none. Attach it before compiling.")
        if optimizer.unit_state is None or not optimizer.unit_state.fits(
                plan):
            raise ValueError(
                "SparsityTarget(structure='units'): the optimizer was built "
                "before the group penalty was attached, so it keeps no state "
                "for the unit groups. Compile the model again after "
                "attach(..., structure='units').")
        bad = [g.name for g in plan.groups if g.k > 1]
        if bad:
            raise ValueError(
                f"SparsityTarget(structure='units') needs k <= 1 (a group "
                f"step that zeroes units); groups {bad} have k = "
                f"{plan.groups[0].k}.")
        self.plan = plan
        self.analysis = analyze(model)
        self.groups = build_groups(self.analysis)
        self.dense_macs = total_macs(self.analysis, {})
        self.controller = UnitController(plan, optimizer.unit_state)
        sizes = [g.size for g in plan.groups]
        if target_flops is not None:
            fraction, counts, left = uniform_fraction(
                model, target_flops, [g.name for g in plan.groups])
            self.targets = [counts.get(g.name, 0) / g.size
                            for g in plan.groups]
            self.macs_goal = left
        else:
            self.targets = [(g.size - kept_count(g.size, target)) / g.size
                            for g in plan.groups]
            self.macs_goal = None
        self.keeps = [round(s * (1 - t)) for s, t in zip(sizes, self.targets)]

    def start(self, begin, end, learning_rate, settings):
        norms = [ops.convert_to_numpy(n)
                 for n in self.plan.norms(lambda v: v.value)]
        starts = [float(np.mean(n == 0)) for n in norms]
        scales = [initial_log_scale(n, t, end - begin, learning_rate)
                  for n, t in zip(norms, self.targets)]
        self.controller.start_run(begin, end, self.targets, self.keeps,
                                  starts, scales, settings)

    def describe(self):
        return [(g.name, t, g.k, g.size)
                for g, t in zip(self.plan.groups, self.targets)]

    def epoch(self, iterations):
        """`(logs, scalars, {histogram tag: unit norms})` of the units
        now."""
        norms = [ops.convert_to_numpy(n).astype("float64")
                 for n in self.plan.norms(lambda v: v.value)]
        scheduled = ops.convert_to_numpy(self.controller.scheduled(
            iterations))
        sizes = np.array([g.size for g in self.plan.groups])
        zero = np.array([np.mean(n == 0) for n in norms])
        logs = {tags.LOG_SPARSITY: float(np.sum(zero * sizes) / sizes.sum()),
                tags.LOG_SPARSITY_TARGET: float(
                    np.sum(scheduled * sizes) / sizes.sum())}
        # As `macs(model, live=True) / macs(model)`, on the analysis read
        # once at the start of the run.
        dead = dead_units(self.analysis, self.groups, "keep")
        live = total_macs(self.analysis, dead) / max(self.dense_macs, 1)
        logs[tags.LOG_LIVE_MACS_FRAC] = live
        scalars, histograms = {}, {}
        for group, norm, z, s in zip(self.plan.groups, norms, zero,
                                     scheduled):
            scalars[tags.tag(tags.SPARSITY, group.name)] = float(z)
            scalars[tags.tag(tags.SPARSITY_TARGET, group.name)] = float(s)
            scalars[tags.tag(tags.LIVE_UNITS, group.name)] = float(
                np.count_nonzero(norm))
            histograms[tags.tag(tags.UNIT_NORMS, group.name)] = norm
        scalars[tags.tag(tags.LIVE_MACS_FRACTION, tags.ALL_LAYERS)] = live
        return logs, scalars, histograms
