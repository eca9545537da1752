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
This is uniform allocation (every group loses the same fraction);
`unit_ranking` ranks units across groups; `unit_run` is the host side.
"""

import math

import numpy as np
from keras import ops

from keras_lk.sparsity.schedule import polynomial
from keras_lk.sparsity.state import RunState, with_field
from keras_lk.structure.group_prox import unit_scales

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

    def phase(self, iterations):
        """`(engaged, steer, locking, held, control)`: whether this step
        runs under the callback, steers, locks the pattern, holds it, and
        moves the control law."""
        run = self.state.run
        engaged = self.engaged(iterations)
        locked = run.locked
        steer = ops.logical_and(engaged, ops.logical_not(locked))
        locking = ops.logical_and(steer, ops.greater_equal(
            ops.cast(iterations, "int64"), run.end))
        held = ops.logical_and(engaged, ops.logical_or(locked, locking))
        control = ops.logical_and(steer, ops.equal(
            iterations % CONTROL_EVERY, 0))
        return engaged, steer, locking, held, control

    def step(self, learning_rate, iterations, value_of):
        """`(new weights, new group vectors, new masks, new run vector)`
        after this step's group proximal step."""
        plan, state = self.plan, self.state
        run = state.run
        engaged, steer, locking, held, control = self.phase(iterations)
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
