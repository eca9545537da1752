"""The controller: SparsityTarget's logic inside the compiled train step.

- The weights are compared on one scale: a covered weight with unit `u`
  gets the proximal strength `t = lr * s * u^(2 - k)`, so that `prox`
  zeroes the same `|w| / u` in every layer of a group (`s` is the group's
  strength).
- For k > 0, every `CONTROL_EVERY` steps it counts each group's zeros and
  moves `log(s)` up when there are too few, down when there are too many.
- For k = 0 (hard thresholding) it is gradual magnitude pruning: every
  `CONTROL_EVERY` steps the threshold rises to the scheduled quantile of
  the group's `|w| / u` (it never falls), and every step zeroes the weights
  up to it.
- Protected weights (see `protection`) are exempt; at `end_step` the
  pattern is locked (see `lock`).

Its state lives in the optimizer (`state.SparsityState`). Each step's new
values are computed once, for every backend; `backend.current()` assigns
them its own way.
"""

import math

import numpy as np
from keras import ops

from keras_lk import backend
from keras_lk.proximal import zeroing_threshold
from keras_lk.sparsity import lock
from keras_lk.sparsity.protection import PROTECT_EVERY
from keras_lk.sparsity.schedule import polynomial
from keras_lk.sparsity.state import WeightState, with_field
from keras_lk.wrappers import unwrap

CONTROL_EVERY = 2
# Each group's sparsity (and, for k = 0, its threshold) is estimated from
# this many weights at most (a fixed random sample; standard error under
# 0.4 points), so that steering costs the same for any model size. The
# lock counts exactly.
SAMPLE = 16384
# Per control step, log(strength) moves by GAIN times the sparsity error.
GAIN = 5.0
MAX_LOG_SCALE = 30.0
MAX_MOVE = 0.5


class Controller:
    """Steers the proximal strengths of `groups` toward the schedule.

    Args:
        groups: The `Group`s.
        state: The optimizer's `SparsityState`.
        protection: The `Protection` of the covered weights.
    """

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
        self.heartbeat = state.run.ensure_heartbeat()
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

    def field(self, index):
        """`[groups]`: each group's value of a `WeightState` field."""
        return ops.stack([self.state.of(g.variables[0]).field(index)
                          for g in self.groups])

    def unit(self, variable):
        return self.state.of(variable).unit

    # The run, on the host.
    def start_run(self, begin, end, start, log_scale, units, settings):
        """A fresh run: the state at its first step."""
        for index, group in enumerate(self.groups):
            for variable in group.variables:
                self.state.of(variable).reset(
                    log_scale[index], units[id(variable)], start[index],
                    self.protection.mask(variable))
        self.state.run.reset(begin, end, settings)

    def finish_run(self):
        self.state.run.finish()

    def thresholds(self, learning_rate):
        """Each group's zeroing threshold on `|w| / u` (0 once locked)."""
        if bool(ops.convert_to_numpy(self.state.run.locked)):
            return [0.0] * len(self.groups)
        scales = np.exp(ops.convert_to_numpy(self.field(WeightState.LOG_SCALE)))
        taus = ops.convert_to_numpy(self.field(WeightState.THRESHOLD))
        return [float(taus[i]) if group.k == 0 else float(zeroing_threshold(
            learning_rate * scales[i], group.k))
            for i, group in enumerate(self.groups)]

    # In the step.
    def engaged(self, iterations):
        """Whether the step that brought the count to `iterations` runs in
        the owning callback's fit (see `heartbeat`)."""
        return self.state.run.engaged(iterations, self.window)

    def scheduled(self, iterations):
        """Each group's scheduled sparsity at step `iterations`."""
        run = self.state.run
        return polynomial(iterations, run.begin, run.end,
                          ops.convert_to_tensor(self.targets),
                          self.field(WeightState.START))

    def strength(self, variable):
        """`learning rate -> t` of a controlled weight's proximal step."""
        k = self.groups[self.group_of[id(variable)]].k
        weight = self.state.of(variable)
        if k == 0:
            # prox(w, t, 0) zeroes |w| <= sqrt(2t): here |w| <= tau * u.
            return lambda learning_rate: 0.5 * ops.square(
                weight.threshold * weight.unit)
        return lambda learning_rate: ops.cast(learning_rate, "float32") * (
            ops.exp(weight.log_scale) * weight.unit ** (2.0 - k))

    def step(self, optimizer, variables, learning_rate, iterations):
        """The new values of `variables` after their proximal step.

        While it steers, a controlled weight takes the controller's
        strength, its protected weights exempt; once locked, no proximal
        step: the pruned weights stay 0; outside the owning fit, the
        regularizer's own step.
        """
        engaged = self.engaged(iterations)
        locked = self.state.run.locked
        steer = ops.logical_and(engaged, ops.logical_not(locked))
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
                ops.logical_and(engaged, locked), masked, stepped)))
        return [new[id(v)] if id(v) in new else optimizer.proximal_step(
            v, v.value, learning_rate) for v in variables]

    def after_step(self, iterations, updated=None):
        """After the step's values were assigned: the control law every
        CONTROL_EVERY steps, the protection every PROTECT_EVERY steps, and
        the lock at `end_step` (only in a step that updated the weights,
        `updated`, under gradient accumulation)."""
        seam = backend.current()
        run = self.state.run
        active = self.engaged(iterations)
        if updated is not None:
            active = ops.logical_and(active, updated)
        steering = ops.logical_and(active, ops.logical_not(run.locked))
        weights = [self.state.of(v) for v in self.covered]

        def controlled():
            log_scale, tau = self._controlled(iterations)
            return [with_field(with_field(
                weight.vector, WeightState.LOG_SCALE,
                log_scale[self.group_of[id(v)]]),
                WeightState.THRESHOLD, tau[self.group_of[id(v)]])
                for v, weight in zip(self.covered, weights)]

        seam.assign([w.vector for w in weights], controlled, ops.logical_and(
            steering, ops.equal(iterations % CONTROL_EVERY, 0)))
        protect = ops.logical_and(steering, ops.equal(
            iterations % PROTECT_EVERY, 0))
        locking = ops.logical_and(steering, ops.greater_equal(
            ops.cast(iterations, "int64"), run.end))
        seam.assign([w.mask for w in weights], lambda: ops.cond(
            locking, self._kept,
            lambda: [self.protection.mask(v) for v in self.covered]),
            ops.logical_or(protect, locking))
        seam.assign(self.covered, lambda: [
            ops.where(w.mask.value, v.value, ops.zeros_like(v.value))
            for v, w in zip(self.covered, weights)], locking)
        seam.assign([run.vector], lambda: [run.with_locked(locking)])

    def _controlled(self, iterations):
        """The groups' next `(log strength, threshold)`, from their zeros
        against the schedule."""
        scheduled = self.scheduled(iterations)
        error = scheduled - self.zero_fractions()
        # Bounded moves: the zeros follow the strength with a lag, and a
        # ReLU network whose weights all went to zero cannot recover.
        step = ops.clip(GAIN * error, -MAX_MOVE, MAX_MOVE)
        log_scale = ops.clip(self.field(WeightState.LOG_SCALE) + step,
                             -MAX_LOG_SCALE, MAX_LOG_SCALE)
        tau = self.field(WeightState.THRESHOLD)
        if any(group.k == 0 for group in self.groups):
            # Never lower: once the zeros run ahead of the schedule the
            # quantile is 0, and a lower threshold would let every pruned
            # weight grow back (magnitude pruning keeps them).
            tau = ops.stack([
                ops.maximum(tau[index], self.quantile(
                    index, scheduled[index])) if group.k == 0
                else tau[index]
                for index, group in enumerate(self.groups)])
        return log_scale, tau

    def _kept(self):
        """The lock's masks of the covered weights, in order."""
        masks = {}
        for group in self.groups:
            for variable, mask in zip(group.variables, lock.kept(
                    group, self.protection, self.unit)):
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

    def quantile(self, index, fraction):
        """The `fraction` quantile of group `index`'s `|w| / u` (sampled):
        the threshold that zeroes that fraction."""
        group = self.groups[index]
        values = ops.sort(ops.concatenate([
            ops.abs(ops.cast(self._sampled(v), "float32")) / self.unit(v)
            for v in group.variables]))
        count = ops.cast(ops.round(fraction * values.shape[0]), "int32")
        return ops.where(ops.greater(count, 0),
                         ops.take(values, ops.maximum(count - 1, 0)), 0.0)


def initial_log_scale(group, units, span, learning_rate):
    """A first strength, before feedback corrects it (k > 0).

    Over the schedule, the proximal steps shrink each weight by about the
    sum of their thresholds: start where that sum reaches the target's
    quantile of `|w| / u`.
    """
    magnitudes = np.concatenate([np.abs(v.numpy()).ravel() / units[id(v)]
                                 for v in group.variables])
    quantile = float(np.quantile(magnitudes, group.target))
    if quantile <= 0 or learning_rate <= 0:
        return 0.0
    log_scale = math.log(quantile / span / learning_rate)
    return min(max(log_scale, -MAX_LOG_SCALE), MAX_LOG_SCALE)
