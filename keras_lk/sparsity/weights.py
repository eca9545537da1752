"""Steering weights elementwise: `SparsityTarget` without `structure`.

Each covered weight is a group of one, on one scale: a weight with scale
`u` gets the proximal strength `t = lr * s * u^(2 - k)`, so that `prox`
zeroes the same `|w| / u` in every layer of a group (`s` is the group's
strength). The law (`control`) moves `log(s)` for k > 0, and raises the
threshold on `|w| / u` for k = 0 (gradual magnitude pruning). Protected
weights (see `protection`) are exempt; at `end_step` the pattern is
locked (see `lock`). Everything is computed elementwise, never as index
arrays over the weights.

Its state is the optimizer's (`state.SparsityState.weights`). Each step's
new values are computed once, for every backend; `backend.current()`
assigns them its own way.
"""

import math

import numpy as np
from keras import ops

from keras_lk.core import backend
from keras_lk.core.chain import unwrap
from keras_lk.monitoring import tags
from keras_lk.penalties.prox import zeroing_threshold
from keras_lk.sparsity import groups as grouping
from keras_lk.sparsity import lock
from keras_lk.sparsity.control import (Phase, initial_log_scale,
                                       moved_log_scale, quantile,
                                       raised_threshold)
from keras_lk.sparsity.counting import exact_zeros
from keras_lk.sparsity.protection import PROTECT_EVERY, Protection
from keras_lk.sparsity.schedule import polynomial

# Each group's sparsity (and, for k = 0, its threshold) is estimated from
# this many weights at most (a fixed random sample; standard error under
# 0.4 points), so that steering costs the same for any model size. The
# lock counts exactly.
SAMPLE = 16384


class WeightController:
    """Steers the proximal strengths of `groups` toward the schedule.

    Args:
        groups: The `WeightGroup`s.
        state: The optimizer's `SparsityState`.
        protection: The `Protection` of the covered weights.
    """

    steers = "weights"

    def __init__(self, groups, state, protection):
        self.groups = groups
        self.state = state
        self.protection = protection
        self.group_of = {id(v): index for index, group in enumerate(groups)
                         for v in group.variables}
        self.covered = [v for group in groups for v in group.variables]
        self.targets = np.array([g.target for g in groups], "float32")
        # The iteration count at the last batch hook of the SparsityTarget
        # that owns this controller, and how many steps one hook covers
        # (steps_per_execution). A step more than `window` steps after the
        # last hook runs in a fit without that callback (one that raised
        # left the controller in the traced step): it is plain proximal
        # training there, untouched by the controller.
        self.run = state.runs[self.steers]
        self.heartbeat = self.run.ensure_heartbeat()
        self.window = 1
        rng = np.random.default_rng(0)
        self.samples = {}  # variable id -> flat indices, or None for all
        for group in groups:
            for variable in group.variables:
                n = math.prod(variable.shape)
                if group.size <= SAMPLE:
                    self.samples[id(variable)] = None
                else:
                    count = max(1, round(SAMPLE * n / group.size))
                    self.samples[id(variable)] = np.sort(rng.choice(
                        n, size=count, replace=False)).astype("int32")

    def controls(self, variable):
        return id(variable) in self.group_of

    def field(self, name):
        """`[groups]`: each group's value of a state field."""
        return ops.stack([self.state.of(g.variables[0]).get(name)
                          for g in self.groups])

    def scale(self, variable):
        return self.state.of(variable).scale

    # The run, on the host.
    def start_run(self, begin, end, start, log_scale, scales, settings):
        """A fresh run: the state at its first step."""
        for index, group in enumerate(self.groups):
            for variable in group.variables:
                self.state.of(variable).reset(
                    self.protection.mask(variable),
                    log_scale=log_scale[index], scale=scales[id(variable)],
                    start=start[index], target=group.target)
        self.run.reset(begin, end, settings)

    def finish_run(self):
        self.run.finish()

    def thresholds(self, learning_rate):
        """Each group's zeroing threshold on `|w| / u` (0 once locked)."""
        if bool(ops.convert_to_numpy(self.run.locked)):
            return [0.0] * len(self.groups)
        scales = np.exp(ops.convert_to_numpy(self.field("log_scale")))
        taus = ops.convert_to_numpy(self.field("threshold"))
        return [float(taus[i]) if group.k == 0 else float(zeroing_threshold(
            learning_rate * scales[i], group.k))
            for i, group in enumerate(self.groups)]

    # In the step.
    def scheduled(self, iterations):
        """Each group's scheduled sparsity at step `iterations`."""
        run = self.run
        return polynomial(iterations, run.begin, run.end,
                          ops.convert_to_tensor(self.targets),
                          self.field("start"))

    def strength(self, variable):
        """`learning rate -> t` of a controlled weight's proximal step."""
        k = self.groups[self.group_of[id(variable)]].k
        entry = self.state.of(variable)
        if k == 0:
            # prox(w, t, 0) zeroes |w| <= sqrt(2t): here |w| <= tau * u.
            return lambda learning_rate: 0.5 * ops.square(
                entry.threshold * entry.scale)
        return lambda learning_rate: ops.cast(learning_rate, "float32") * (
            ops.exp(entry.log_scale) * entry.scale ** (2.0 - k))

    def step(self, optimizer, variables, learning_rate, iterations,
             condition):
        """Assigns `variables` their proximal step (where `condition`
        holds, None for always), then moves the law, the protection and
        the lock."""
        backend.current().assign(variables, lambda: self.values(
            optimizer, variables, learning_rate, iterations), condition)
        self.after_step(iterations, condition)

    def values(self, optimizer, variables, learning_rate, iterations):
        """The new values of `variables` after their proximal step.

        While it steers, a controlled weight takes the controller's
        strength, its protected weights exempt; once locked, no proximal
        step: the pruned weights stay 0; outside the owning fit, the
        regularizer's own step.
        """
        phase = Phase(self.run, iterations, self.window)
        steer = phase.steer
        controlled = [v for v in variables if self.controls(v)]

        def stepped():
            new = []
            for variable in controlled:
                controlled_strength = self.strength(variable)
                regular = unwrap(variable.regularizer).proximal_strength
                size = math.prod(variable.shape)

                def strength(learning_rate, controlled=controlled_strength,
                             regular=regular, size=size):
                    return ops.where(steer, controlled(learning_rate),
                                     ops.cast(regular(learning_rate, size),
                                              "float32"))

                new.append(optimizer.proximal_step(
                    variable, variable.value, learning_rate, strength,
                    self.state.of(variable).mask.value, steer))
            return new

        def masked():
            return [ops.where(self.state.of(v).mask.value, v.value,
                              ops.zeros_like(v.value)) for v in controlled]

        new = {}
        if controlled:
            new = dict(zip(map(id, controlled), backend.current().select(
                ops.logical_and(phase.engaged, phase.locked), masked,
                stepped)))
        return [new[id(v)] if id(v) in new else optimizer.proximal_step(
            v, v.value, learning_rate) for v in variables]

    def after_step(self, iterations, updated=None):
        """After the step's values were assigned: the law every
        CONTROL_EVERY steps, the protection every PROTECT_EVERY steps, and
        the lock at `end_step` (only in a step that updated the weights,
        `updated`, under gradient accumulation)."""
        seam = backend.current()
        phase = Phase(self.run, iterations, self.window, updated)
        entries = [self.state.of(v) for v in self.covered]

        def controlled():
            log_scale, tau = self._law(iterations)
            return [entry.changed(log_scale=log_scale[self.group_of[id(v)]],
                                  threshold=tau[self.group_of[id(v)]])
                    for v, entry in zip(self.covered, entries)]

        seam.assign([e.vector for e in entries], controlled, phase.control)
        protect = phase.every(iterations, PROTECT_EVERY)
        locking = phase.locking
        seam.assign([e.mask for e in entries], lambda: ops.cond(
            locking, self._kept,
            lambda: [self.protection.mask(v) for v in self.covered]),
            ops.logical_or(protect, locking))
        seam.assign(self.covered, lambda: [
            ops.where(e.mask.value, v.value, ops.zeros_like(v.value))
            for v, e in zip(self.covered, entries)], locking)
        run = self.run
        seam.assign([run.vector], lambda: [run.with_locked(locking)])

    def _law(self, iterations):
        """The groups' next `(log strength, threshold)`, from their zeros
        against the schedule."""
        scheduled = self.scheduled(iterations)
        log_scale = moved_log_scale(self.field("log_scale"), scheduled,
                                    self.zero_fractions())
        tau = self.field("threshold")
        if any(group.k == 0 for group in self.groups):
            tau = ops.stack([
                raised_threshold(tau[index], self.magnitudes(index),
                                 scheduled[index]) if group.k == 0
                else tau[index]
                for index, group in enumerate(self.groups)])
        return log_scale, tau

    def _kept(self):
        """The lock's masks of the covered weights, in order."""
        masks = {}
        for group in self.groups:
            for variable, mask in zip(group.variables, lock.kept(
                    group, self.protection, self.scale)):
                masks[id(variable)] = mask
        return [masks[id(v)] for v in self.covered]

    def _sampled(self, variable):
        values = ops.reshape(variable, (-1,))
        indices = self.samples[id(variable)]
        return values if indices is None else ops.take(values, indices)

    def zero_fractions(self):
        """Each group's fraction of zeros, estimated on the samples."""
        fractions = []
        for group in self.groups:
            zeros, seen = 0, 0
            for variable in group.variables:
                values = self._sampled(variable)
                zeros += ops.sum(ops.cast(ops.equal(values, 0), "int32"))
                seen += int(values.shape[0])
            fractions.append(ops.cast(zeros, "float32") / seen)
        return ops.stack(fractions)

    def magnitudes(self, index):
        """Group `index`'s `|w| / u`, on the samples (a 1-D tensor)."""
        return ops.concatenate([
            ops.abs(ops.cast(self._sampled(v), "float32")) / self.scale(v)
            for v in self.groups[index].variables])

    def quantile(self, index, fraction):
        """The `fraction` quantile of group `index`'s `|w| / u` (sampled):
        the threshold that zeroes that fraction."""
        return quantile(self.magnitudes(index), fraction)


class WeightRun:
    """The host side of `SparsityTarget` on weights: the groups, the start
    of a run and what each epoch logs (the step's side is
    `WeightController`)."""

    def __init__(self, model, optimizer, target, allocation, protect):
        layers = grouping.covered_layers(model)
        state = optimizer.state("sparsity")
        grouping.check_state(layers, state)
        self.groups = grouping.allocate(layers, target, allocation)
        self.allocation = allocation
        self.optimizer = optimizer
        protection = Protection(
            model, [v for group in self.groups for v in group.variables],
            protect)
        self.controller = WeightController(self.groups, state, protection)

    def describe(self):
        return [(g.name, g.target, g.k, g.size) for g in self.groups]

    def start(self, begin, end, learning_rate, settings):
        scales = grouping.scales(self.groups, self.allocation)
        self.controller.start_run(
            begin, end,
            [exact_zeros(group.variables)["fraction"]
             for group in self.groups],
            [initial_log_scale(initial_magnitudes(group, scales),
                               group.target, end - begin, learning_rate)
             for group in self.groups],
            scales, settings)

    def epoch(self, iterations, learning_rate=None):
        """`(logs, scalars, {})` of the groups now; the scalars (the
        cards) only with the step's `learning_rate`."""
        scheduled = ops.convert_to_numpy(self.controller.scheduled(
            iterations))
        actual = [exact_zeros(group.variables)["fraction"]
                  for group in self.groups]
        sizes = [group.size for group in self.groups]
        logs = {
            tags.LOG_SPARSITY: sum(a * n for a, n in zip(actual, sizes))
            / sum(sizes),
            tags.LOG_SPARSITY_TARGET: float(sum(
                s * n for s, n in zip(scheduled, sizes)) / sum(sizes))}
        scalars = {}
        if learning_rate is None:
            return logs, scalars, {}
        thresholds = self.controller.thresholds(learning_rate)
        for index, group in enumerate(self.groups):
            scalars[tags.tag(tags.SPARSITY, group.name)] = actual[index]
            scalars[tags.tag(tags.SPARSITY_TARGET, group.name)] = float(
                scheduled[index])
            scalars[tags.tag(tags.ZEROING_THRESHOLD, group.name)] = (
                thresholds[index])
        return logs, scalars, {}


def initial_magnitudes(group, scales):
    """Group's `|w| / u` on the host, for `control.initial_log_scale`."""
    return np.concatenate([np.abs(v.numpy()).ravel() / scales[id(v)]
                           for v in group.variables])
