"""Steering whole units: `SparsityTarget(structure="units")`, in the step.

One step for every allocation, over the unit groups of the optimizer's
`UnitPlan`; an allocation policy (`Uniform`, `Ranked` in `ranking`) says
how the units are ranked and how many may go. Per step, with the unit
norms after the wrapped optimizer's step:

- the policy ranks the units and bounds them: at most the scheduled
  number are zero (a zero unit gets no gradient and never comes back, so
  an overshoot could not be undone), never a group's last unit; the units
  that would stay if the pattern were locked now (`keep`) take no step, so
  the penalty drives only the others to zero and the survivors are not
  shrunk (as OTO's half-space projected step);
- k > 0: the group proximal step with the policy's strength, the bounded
  units spared; k = 0: gradual magnitude pruning of units (a threshold on
  the norms for "uniform", exactly the allowed count when ranked);
- the law (`control`) every `CONTROL_EVERY` steps, on the policy's
  measure of the zeros;
- at `end_step` the pattern is locked: exactly the `keep` highest ranked
  units stay, and the rest stay zero while the others fine-tune.

The state is the optimizer's (`state.SparsityState.units`), so it is
carried by JAX's stateless step, BackupAndRestore and `.keras` files.
"""

import numpy as np
from keras import ops

from keras_lk.core import backend
from keras_lk.penalties.prox import unit_scales
from keras_lk.sparsity.control import Phase, moved_log_scale, raised_threshold
from keras_lk.sparsity.schedule import polynomial


def ranks(values):
    """Each value's rank, smallest first (0), as float32."""
    order = ops.argsort(values)
    return ops.cast(ops.argsort(order), "float32")


def kept_units(norms, keep):
    """The mask of the `keep` largest nonzero norms (ties kept)."""
    order = ops.flip(ops.sort(norms), axis=0)
    keep = ops.cast(ops.clip(keep, 1, norms.shape[0]), "int32")
    threshold = ops.take(order, keep - 1)
    return ops.logical_and(ops.greater_equal(norms, threshold),
                           ops.greater(norms, 0))


class Uniform:
    """Every group loses the same fraction of its units, on its own: ranked
    within the group by norm, with its own strength and law."""

    name = "uniform"
    # k = 0 steps by a threshold on the norms (the scheduled quantile).
    thresholds = True

    def prepare(self, norms, entries, learning_rate):
        """Reads what the step's other calls share, once a step."""

    def per_group(self, scheduled, count):
        """The schedule of each of the `count` groups (a `[count]`
        tensor), as a list."""
        return [scheduled[i] for i in range(count)]

    def bounds(self, norms, scheduled, entries):
        """Per group `(allowed, top)`: the units that may be zero now, and
        those that would stay if the pattern were locked now."""
        found = []
        for norm, fraction, entry in zip(norms, scheduled, entries):
            size = norm.shape[0]
            rank = ranks(norm)
            allowed = ops.less(rank, ops.minimum(
                ops.floor(fraction * size + 1e-6), size - 1.0))
            top = ops.greater_equal(rank, size - entry.keep)
            found.append((allowed, top))
        return found

    def strength(self, index, group, entry, learning_rate):
        """The steered strength `t` of group `index`'s step (k = 0: the
        threshold's), or None for k = 0 steps that zero the allowed units
        exactly."""
        if group.k == 0:
            return 0.5 * ops.square(entry.threshold)
        return learning_rate * ops.exp(entry.log_scale)

    def kept(self, afters, scheduled, entries):
        """The lock's masks: per group its `keep` largest norms."""
        return [kept_units(after, entry.keep)
                for after, entry in zip(afters, entries)]

    def zeros(self, afters):
        """Per group, the measure of its zeros the law compares with the
        schedule: its fraction of zero units."""
        return [ops.mean(ops.cast(ops.equal(a, 0), "float32"))
                for a in afters]


class UnitController:
    """Steers `plan`'s groups toward their targets, with `state` (the
    optimizer's `SparsityState`), under `policy` (`Uniform` or
    `ranking.Ranked`)."""

    steers = "units"

    def __init__(self, plan, state, policy):
        self.plan = plan
        self.state = state
        self.policy = policy
        self.run = state.runs[self.steers]
        self.heartbeat = self.run.ensure_heartbeat()
        self.window = 1

    # On the host.
    def start_run(self, begin, end, targets, keeps, starts, log_scales,
                  settings):
        for index, group in enumerate(self.plan.groups):
            self.state.units[index].reset(
                np.ones(group.size, bool), log_scale=log_scales[index],
                target=targets[index], start=starts[index],
                keep=keeps[index])
        self.run.reset(begin, end, settings)

    def finish_run(self):
        self.run.finish()

    # In the step.
    def scheduled(self, iterations):
        """Each group's scheduled fraction of zeros (of units, or with a
        ranked MACs target the share of the MACs)."""
        run = self.run
        entries = self.state.units
        return polynomial(iterations, run.begin, run.end,
                          ops.stack([e.target for e in entries]),
                          ops.stack([e.start for e in entries]))

    def step(self, optimizer, variables, learning_rate, iterations,
             condition):
        """Assigns the step's new weights and state, computed only where
        `condition` holds (None for always)."""
        entries = self.state.units
        targets = (list(variables) + [e.vector for e in entries]
                   + [e.mask for e in entries] + [self.run.vector])
        backend.current().assign(targets, lambda: [
            value for part in self.values(learning_rate, iterations,
                                          lambda v: v.value)
            for value in part], condition)

    def values(self, learning_rate, iterations, value_of):
        """`(new weights, new state vectors, new masks, new run vector)`
        after this step's group proximal step."""
        plan, policy = self.plan, self.policy
        entries = self.state.units
        phase = Phase(self.run, iterations, self.window)
        scheduled = policy.per_group(self.scheduled(iterations),
                                     len(plan.groups))
        norms = plan.norms(value_of)
        lr = ops.cast(learning_rate, "float32")
        policy.prepare(norms, entries, lr)
        scales = []
        for index, (group, norm, entry, (allowed, top)) in enumerate(zip(
                plan.groups, norms, entries,
                policy.bounds(norms, scheduled, entries))):
            t = policy.strength(index, group, entry, lr)
            regular = group.strength(lr)
            if t is None:
                # Ranked k = 0: exactly the allowed units go.
                steered = ops.zeros_like(norm)
                scale = unit_scales(norm, regular, group.k)
            else:
                # One group step, with the strength of the phase.
                scale = steered = unit_scales(
                    norm, ops.where(phase.steer, t, regular), group.k)
            # Spared while steering: beyond the schedule's count, or among
            # the `keep`.
            spared = ops.logical_or(top, ops.logical_and(
                ops.equal(steered, 0), ops.logical_not(allowed)))
            steered = ops.where(spared, ops.ones_like(steered), steered)
            scales.append(ops.where(phase.steer, steered, scale))
        afters = [n * s for n, s in zip(norms, scales)]
        masks = []
        for index, kept in enumerate(policy.kept(afters, scheduled,
                                                 entries)):
            mask = ops.where(phase.locking, kept, entries[index].mask.value)
            scales[index] = ops.where(phase.held, ops.cast(mask, "float32"),
                                      scales[index])
            masks.append(mask)
        # The law.
        vectors = []
        for group, norm, entry, fraction, zeros in zip(
                plan.groups, norms, entries, scheduled,
                policy.zeros(afters)):
            values = {"log_scale": moved_log_scale(entry.log_scale,
                                                   fraction, zeros)}
            if group.k == 0 and policy.thresholds:
                values["threshold"] = raised_threshold(entry.threshold, norm,
                                                       fraction)
            vector = entry.vector.value
            vectors.append(ops.where(phase.control,
                                     entry.changed(vector, **values),
                                     vector))
        weights = plan.scaled(scales, value_of)
        return weights, vectors, masks, [
            self.run.with_locked(phase.locking)]
