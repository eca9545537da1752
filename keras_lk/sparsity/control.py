"""The control law of `SparsityTarget`, written once for weights and units.

It steers *groups* toward a schedule: a group of weights compared
elementwise (each weight is a group of one: its magnitude is `|w| / u`),
or a unit group (each unit is the coupled slices of one neuron, channel or
head: its magnitude is the norm of its slices). For either:

- the schedule (`schedule.polynomial`) gives the fraction of zeros asked
  for at each step;
- for k > 0, every `CONTROL_EVERY` steps `log(strength)` moves by `GAIN`
  times the error between the schedule and the zeros, by at most
  `MAX_MOVE` and within `+-MAX_LOG_SCALE` (`moved_log_scale`);
- for k = 0 (hard thresholding) the threshold on the magnitudes rises to
  the scheduled quantile and never falls (`raised_threshold`);
- at `end_step` the pattern is locked, and from then on the zeros stay
  zero while the rest trains without the penalty (`Phase`).

Where the steps differ (elementwise or by unit, and how the units are
ranked across groups) is in `weights` and `units`.
"""

import functools
import math

import numpy as np
from keras import ops

CONTROL_EVERY = 2
# Per control step, log(strength) moves by GAIN times the sparsity error,
# by at most MAX_MOVE: the zeros follow the strength with a lag, and a
# ReLU network whose weights all went to zero cannot recover.
GAIN = 5.0
MAX_MOVE = 0.5
MAX_LOG_SCALE = 30.0


class Phase:
    """Where the step that brought the count to `iterations` stands in the
    run (`state.RunState`), as bool tensors:

    - `engaged`: it runs in the owning callback's fit (within `window`
      steps of its last batch hook), and, with `updated`, updates the
      weights (gradient accumulation);
    - `locked`: the pattern was locked before this step;
    - `steer`: engaged and not locked: the controller sets the strengths;
    - `locking`: steering at or past `end_step`: this step locks;
    - `held`: engaged and locked, or locking: the pattern is held;
    - `control`: steering, and a step at which the law moves.
    """

    def __init__(self, run, iterations, window, updated=None):
        engaged = run.engaged(iterations, window)
        if updated is not None:
            engaged = ops.logical_and(engaged, updated)
        self.engaged = engaged
        self.locked = run.locked
        self.steer = ops.logical_and(engaged, ops.logical_not(self.locked))
        self._run, self._iterations = run, iterations

    # Computed where a step asks (an eager step runs each operation).
    @functools.cached_property
    def locking(self):
        return ops.logical_and(self.steer, ops.greater_equal(
            ops.cast(self._iterations, "int64"), self._run.end))

    @functools.cached_property
    def held(self):
        return ops.logical_and(self.engaged, ops.logical_or(
            self.locked, self.locking))

    @functools.cached_property
    def control(self):
        return self.every(self._iterations, CONTROL_EVERY)

    def every(self, iterations, period):
        """Steering, at a step that is a multiple of `period`."""
        return ops.logical_and(self.steer, ops.equal(iterations % period, 0))


def moved_log_scale(log_scale, scheduled, zeros):
    """The law for k > 0: `log_scale` moved toward the schedule, up when
    there are fewer zeros than `scheduled`, down when more (tensors)."""
    move = ops.clip(GAIN * (scheduled - zeros), -MAX_MOVE, MAX_MOVE)
    return ops.clip(log_scale + move, -MAX_LOG_SCALE, MAX_LOG_SCALE)


def quantile(values, fraction):
    """The value of a 1-D tensor at or below which `fraction` of `values`
    lie: the threshold that zeroes that fraction (0 for none)."""
    ordered = ops.sort(values)
    count = ops.cast(ops.round(fraction * ordered.shape[0]), "int32")
    return ops.where(ops.greater(count, 0),
                     ops.take(ordered, ops.maximum(count - 1, 0)), 0.0)


def raised_threshold(threshold, values, fraction):
    """The law for k = 0: the threshold raised to the scheduled quantile of
    the magnitudes `values`. Never lowered: once the zeros run ahead of the
    schedule the quantile is 0, and a lower threshold would let every
    pruned weight grow back (magnitude pruning keeps them)."""
    return ops.maximum(threshold, quantile(values, fraction))


def initial_log_scale(magnitudes, fraction, span, learning_rate):
    """A first `log(strength)` for k > 0, before the law corrects it.

    Over the `span` steps of the schedule the proximal steps shrink each
    magnitude by about the sum of their strengths: start where that sum
    reaches the `fraction` quantile of `magnitudes` (a NumPy array).
    """
    value = float(np.quantile(magnitudes, fraction)) if len(magnitudes) else 0.0
    if value <= 0 or learning_rate <= 0:
        return 0.0
    log_scale = math.log(value / span / learning_rate)
    return min(max(log_scale, -MAX_LOG_SCALE), MAX_LOG_SCALE)
