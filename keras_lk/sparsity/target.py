"""`SparsityTarget`: drive proximal Lk training to a requested sparsity.

The controller runs inside the compiled train step, as part of
`ProximalOptimizer`'s proximal step, so it adds no host round trip:

- the scheduled sparsity follows gradual magnitude pruning's polynomial
  (`keras_lk.sparsity.schedule.polynomial`) from its value at `begin_step`
  to the target at `end_step`;
- the weights are compared on one scale, whatever their layer's size, the
  regularizer's alpha or its reduction: a covered weight `w` with unit `u`
  (1, or its layer's RMS for `allocation="normalized"`) gets the proximal
  strength `t = lr * s * u^(2 - k)`, so that `prox` zeroes the same
  `|w| / u` in every layer of a group (`s` is the group's strength);
- for k > 0, every `CONTROL_EVERY` steps it counts each group's zeros and
  moves `log(s)` up when there are too few, down when there are too many;
- for k = 0 (hard thresholding) it is gradual magnitude pruning: every
  `CONTROL_EVERY` steps the threshold rises to the scheduled quantile of
  the group's `|w| / u` (it never falls), and every step zeroes the
  weights up to it; a pruned weight whose gradient carries it past the
  threshold comes back;
- no layer collapses: each output unit's largest weight (the largest `|w|`
  over every axis but the last) is exempt from the proximal step and from
  the lock, so every unit of every layer keeps at least one input (with
  `protect="outputs"`: every unit of the layers that produce the model's
  outputs, and each other weight's single largest element);
- at `end_step` it locks the pattern: exactly `round(target * n)` weights of
  each group are zero (the smallest `|w| / u`, protected weights excepted),
  and from then on those stay 0 and the others train without the penalty.
"""

import contextlib
import math
import numbers
import os
import zlib

import keras
import numpy as np
import tensorflow as tf
from keras import ops

from keras_lk import _validation, tags
from keras_lk._require_tf import require_backend
from keras_lk.attach import weights_by_layer
from keras_lk.optimizers import ProximalOptimizer, optimizer_chain
from keras_lk.proximal import zeroing_threshold
from keras_lk.regularizers import LkRegularizer, unwrap
from keras_lk.sparsity.schedule import polynomial
from keras_lk.sparsity.shipping import exact_zeros
from keras_lk.summary import RunWriter, check_writable

ALLOCATIONS = ("global", "uniform", "normalized")
PROTECTIONS = ("units", "outputs")
CONTROL_EVERY = 2
# The protected weights (each output unit's largest) are found again every
# PROTECT_EVERY steps and at the lock: a protected weight is never shrunk,
# so it stays its unit's largest in between.
PROTECT_EVERY = 32
# The controller estimates each group's sparsity (and, for k = 0, its
# threshold) from this many weights at most (a fixed random sample;
# standard error under 0.4 points), so that steering costs the same for any
# model size. The lock counts exactly.
SAMPLE = 16384
# Per control step, log(strength) moves by GAIN times the sparsity error.
GAIN = 5.0
MAX_LOG_SCALE = 30.0
MAX_MOVE = 0.5


class _Group:
    """Weights that reach one target together, compared on one scale."""

    def __init__(self, name, variables, target, k):
        self.name = name
        self.variables = variables
        self.target = target
        self.k = k
        self.size = sum(math.prod(v.shape) for v in variables)


def protected(value, per_unit=True):
    """Each output unit's largest `|w|` (over every axis but the last; for
    a vector, its largest element): True there, False elsewhere. A unit
    whose weights are all 0 has none. With `per_unit=False`, the weight's
    largest `|w|` only."""
    magnitude = ops.abs(value)
    axes = tuple(range(len(value.shape) - 1)) or (0,)
    if not per_unit:
        axes = tuple(range(len(value.shape))) or None
    largest = ops.max(magnitude, axis=axes, keepdims=True)
    return ops.logical_and(ops.equal(magnitude, largest),
                           ops.greater(largest, 0))


# The fields of the state each covered weight keeps in the optimizer (its
# group's values, repeated in every member), and of the run's state.
LOG_SCALE, TAU, UNIT, START = range(4)
BEGIN, END, LOCKED, UNFINISHED, SETTINGS = range(5)


def _with(vector, field, value):
    """`vector` with `vector[field] = value` (a tensor)."""
    vector = ops.convert_to_tensor(vector)
    index = ops.arange(vector.shape[0])
    return ops.where(ops.equal(index, field),
                     ops.cast(value, vector.dtype), vector)


def _output_weights(model):
    """The weights of the layers that produce `model`'s outputs (whose
    units feed the loss): a Sequential model's last layer with weights, a
    functional model's output layers. ValueError for other models."""
    if isinstance(model, keras.Sequential):
        for layer in reversed(model.layers):
            if layer.weights:
                return list(layer.weights)
        return []
    names = getattr(model, "output_names", None)
    if not isinstance(model, keras.Model) or not names:
        raise ValueError(
            "SparsityTarget(protect='outputs') finds the units that feed "
            "the loss in the layers that produce the model's outputs, which "
            "it can only do for a Sequential or functional model. Use "
            f"protect='units' for this model. Received: model of type "
            f"{type(model).__name__}")
    weights = []
    for name in names:
        layer = model.get_layer(name)
        if not layer.weights:
            raise ValueError(
                f"SparsityTarget(protect='outputs'): the model's output "
                f"layer {name!r} ({type(layer).__name__}) has no weights, "
                f"so the units that feed the loss are in a layer before "
                f"it. Give the weighted layer the output (e.g. Dense with "
                f"activation='softmax'), or use protect='units'.")
        weights += layer.weights
    return weights


class _Controller:
    """The controller: the step's logic over the state the optimizer keeps.

    Each covered weight has, among `ProximalOptimizer`'s variables, a mask
    (before the lock: its protected weights, exempt from the proximal step;
    from the lock on: the weights kept) and a state vector [log strength,
    threshold (k = 0), unit, starting sparsity], its group's values; the run
    is [begin_step, end_step, locked, unfinished, settings]. Saved with the
    optimizer, they let BackupAndRestore resume a run where it stopped.
    """

    def __init__(self, groups, optimizer, per_unit=None):
        self.groups = groups
        # Variable id -> whether each of its units keeps its largest weight
        # (else only the weight's largest element is kept); default all.
        self.per_unit = per_unit or {}
        self.group_of = {id(v): index for index, group in enumerate(groups)
                         for v in group.variables}
        slots = optimizer._sparsity_slots
        self.masks = {id(v): slots[id(v)][0] for g in groups
                      for v in g.variables}
        self.states = {id(v): slots[id(v)][1] for g in groups
                       for v in g.variables}
        self.run = optimizer._sparsity_run
        self.targets = np.array([g.target for g in groups], "float32")
        # The iteration count at the last batch hook of the SparsityTarget
        # that owns this controller, and how many steps one hook covers
        # (steps_per_execution). A step more than `window` steps after the
        # last hook runs in a fit without that callback (one that raised
        # left the controller in the traced step): it is plain proximal
        # training there, untouched by the controller.
        self.heartbeat = optimizer._sparsity_heartbeat
        if self.heartbeat is None:  # TensorFlow: a variable of its own
            self.heartbeat = keras.Variable(np.array(-1, "int64"),
                                            dtype="int64", trainable=False)
        else:  # JAX: the optimizer's, which the stateless step carries
            self.heartbeat.assign(-1)
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

    # The state, as tensors.
    def field(self, field):
        """`[groups]`: each group's value of a state field."""
        return ops.stack([self.states[id(g.variables[0])][field]
                          for g in self.groups])

    def set_field(self, field, values):
        for index, group in enumerate(self.groups):
            for variable in group.variables:
                state = self.states[id(variable)]
                state.assign(_with(state, field, values[index]))

    def unit(self, variable):
        return self.states[id(variable)][UNIT]

    def protected(self, variable):
        """`protected` for a covered weight, by its protection."""
        return protected(variable.value,
                         self.per_unit.get(id(variable), True))

    @property
    def locked(self):
        return ops.not_equal(self.run[LOCKED], 0)

    def start_run(self, begin, end, start, log_scale, units, settings):
        """A fresh run (host side): the state at its first step."""
        for index, group in enumerate(self.groups):
            for variable in group.variables:
                self.states[id(variable)].assign(np.array(
                    [log_scale[index], 0.0, units[id(variable)],
                     start[index]], "float32"))
                self.masks[id(variable)].assign(self.protected(variable))
        self.run.assign(np.array([begin, end, 0, 1, settings], "int64"))

    def finish_run(self):
        self.run.assign(_with(self.run, UNFINISHED, 0))

    def controls(self, variable):
        return id(variable) in self.group_of

    def strength(self, variable):
        """`learning rate -> t` of a controlled weight's proximal step."""
        index = self.group_of[id(variable)]
        k = self.groups[index].k
        state = self.states[id(variable)]
        if k == 0:
            # prox(w, t, 0) zeroes |w| <= sqrt(2t): here |w| <= tau * u.
            return lambda learning_rate: 0.5 * ops.square(
                state[TAU] * state[UNIT])
        return lambda learning_rate: ops.cast(learning_rate, "float32") * (
            ops.exp(state[LOG_SCALE]) * state[UNIT] ** (2.0 - k))

    def step(self, strategy, variables, proximal, iterations):
        """The proximal step of `variables` under control, then control.

        Args:
            strategy: The distribution strategy (cross-replica context).
            variables: The weights with a proximal regularizer.
            proximal: `proximal(variable, strength=None, exempt=None)`
                applies the weight's proximal step, with `t =
                strength(learning_rate)` if given, leaving the weights where
                the bool tensor `exempt` is True as they are.
            iterations: The optimizer's iteration count after this step.
        """

        def steering():
            for variable in variables:
                if not self.controls(variable):
                    proximal(variable)
                    continue
                proximal(variable, self.strength(variable),
                         ops.convert_to_tensor(self.masks[id(variable)]))

        def locked():
            for variable in variables:
                if not self.controls(variable):
                    proximal(variable)
                    continue
                _assign_masked(strategy, variable, ops.convert_to_tensor(
                    self.masks[id(variable)]))

        def plain():
            for variable in variables:
                proximal(variable)

        def steered():
            # One branch for all weights: a cond per weight costs step time.
            tf.cond(self.locked, locked, steering)
            self.after_step(strategy, iterations)

        tf.cond(self.engaged(iterations), steered, plain)

    # The same step where it is a pure function (JAX): conds return values,
    # and the assignments come after them (a JAX cond cannot assign).
    def step_values(self, variables, proximal, iterations):
        """The new values of `variables` (not assigned): `proximal(variable,
        value, strength=None, exempt=None)` returns a weight's proximal
        step.

        No cond: one proximal step whose strength and exemptions are
        selected (the controller's while it steers, the regularizer's
        outside the owning fit), or, once locked, the lock's mask alone. A
        JAX cond around the step measured 20% slower on 2.1M weights.
        """
        engaged = self.engaged(iterations)
        steer = ops.logical_and(engaged, ops.logical_not(self.locked))
        apply_lock = ops.logical_and(engaged, self.locked)
        new = []
        for variable in variables:
            value = variable.value
            if not self.controls(variable):
                new.append(proximal(variable, value))
                continue
            mask = self.masks[id(variable)].value
            controlled = self.strength(variable)
            regular = unwrap(variable.regularizer).proximal_strength
            size = math.prod(variable.shape)

            def strength(learning_rate, controlled=controlled,
                         regular=regular, size=size):
                return ops.where(steer, controlled(learning_rate),
                                 ops.cast(regular(learning_rate, size),
                                          "float32"))

            stepped = proximal(variable, value, strength,
                               ops.logical_and(mask, steer))
            # Locked: no proximal step; the pruned weights stay 0.
            locked = ops.where(mask, value, ops.zeros_like(value))
            new.append(ops.where(apply_lock, locked, stepped))
        return new

    def after_step_values(self, variables, iterations, updated=None):
        """`after_step` for the step `step_values` took (its values already
        assigned): strengths, protection and the lock, each a cond that
        returns values."""
        active = self.engaged(iterations)
        if updated is not None:
            active = ops.logical_and(active, updated)
        steering = ops.logical_and(active, ops.logical_not(self.locked))
        groups_fields = (LOG_SCALE, TAU)
        current = [self.field(f) for f in groups_fields]
        fields = ops.cond(ops.logical_and(steering, ops.equal(
            iterations % CONTROL_EVERY, 0)),
            lambda: list(self._controlled(iterations)), lambda: current)
        for field, values in zip(groups_fields, fields):
            self.set_field(field, values)

        covered = [v for g in self.groups for v in g.variables]
        protect = ops.logical_and(steering, ops.equal(
            iterations % PROTECT_EVERY, 0))
        lock = ops.logical_and(steering, ops.greater_equal(
            ops.cast(iterations, "int64"), self.run[END]))

        def protect_or_lock():
            # The lock re-finds the protected weights itself.
            return ops.cond(lock, lambda: self._lock_values(covered),
                            lambda: ([self.protected(v) for v in covered],
                                     [v.value for v in covered]))

        # One cond for both: every PROTECT_EVERY steps and at the lock (a
        # JAX cond costs a copy of the arrays it passes through; measured
        # faster than a cond for the masks and a select for the weights).
        masks, weights = ops.cond(
            ops.logical_or(protect, lock), protect_or_lock,
            lambda: ([self.masks[id(v)].value for v in covered],
                     [v.value for v in covered]))
        for variable, mask, weight in zip(covered, masks, weights):
            self.masks[id(variable)].assign(mask)
            variable.assign(weight)
        self.run.assign(_with(self.run, LOCKED, ops.logical_or(
            self.locked, lock)))

    def _controlled(self, iterations):
        """The groups' next `(log strength, threshold)`, from their zeros
        against the schedule (both backends' control step)."""
        scheduled = self.scheduled(iterations)
        error = scheduled - self.zero_fractions()
        # Bounded moves: the zeros follow the strength with a lag, and a
        # ReLU network whose weights all went to zero cannot recover.
        step = ops.clip(GAIN * error, -MAX_MOVE, MAX_MOVE)
        log_scale = ops.clip(self.field(LOG_SCALE) + step, -MAX_LOG_SCALE,
                             MAX_LOG_SCALE)
        tau = self.field(TAU)
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

    def _lock_values(self, covered):
        """`_lock`'s masks and masked weights of `covered`, as values."""
        masks, weights = {}, {}
        for group in self.groups:
            for variable, mask in zip(group.variables,
                                      self._kept(group)):
                masks[id(variable)] = mask
                value = variable.value
                weights[id(variable)] = ops.where(mask, value,
                                                  ops.zeros_like(value))
        return ([masks[id(v)] for v in covered],
                [weights[id(v)] for v in covered])

    def _kept(self, group):
        """The lock's mask of each weight of `group`: the weights kept."""
        exempt = [self.protected(v) for v in group.variables]
        # Protected weights rank last: never zeroed by the lock.
        scores = ops.concatenate([
            ops.reshape(ops.where(keep, np.inf, ops.abs(ops.cast(
                v.value, "float32")) / self.unit(v)), (-1,))
            for v, keep in zip(group.variables, exempt)])
        count = int(round(group.target * group.size))
        # The zeros first (|w| = 0), then the smallest |w| / u.
        kept = ops.logical_not(lowest(scores, count))
        masks, start = [], 0
        for variable, keep in zip(group.variables, exempt):
            n = math.prod(variable.shape)
            masks.append(ops.logical_or(ops.reshape(
                kept[start:start + n], variable.shape), keep))
            start += n
        return masks

    def engaged(self, iterations):
        """Whether the step that brought the count to `iterations` runs in
        the owning callback's fit (see `heartbeat`)."""
        since = (ops.cast(iterations, "int64") - 1
                 - ops.convert_to_tensor(self.heartbeat))
        return ops.logical_and(ops.greater_equal(since, 0),
                               ops.less(since, self.window))

    def scheduled(self, iterations):
        """Each group's scheduled sparsity at step `iterations`."""
        return polynomial(iterations, self.run[BEGIN], self.run[END],
                          ops.convert_to_tensor(self.targets),
                          self.field(START))

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

    def after_step(self, strategy, iterations):
        """Controls the strengths; locks the pattern at `end_step`."""
        steering = ops.logical_not(self.locked)

        def control():
            log_scale, tau = self._controlled(iterations)
            self.set_field(LOG_SCALE, log_scale)
            if any(group.k == 0 for group in self.groups):
                self.set_field(TAU, tau)

        def protect():
            for group in self.groups:
                for variable in group.variables:
                    self.masks[id(variable)].assign(
                        self.protected(variable))

        ops.cond(ops.logical_and(steering, ops.equal(
            iterations % CONTROL_EVERY, 0)), control, lambda: None)
        ops.cond(ops.logical_and(steering, ops.equal(
            iterations % PROTECT_EVERY, 0)), protect, lambda: None)
        ops.cond(ops.logical_and(steering, ops.greater_equal(
            ops.cast(iterations, "int64"), self.run[END])),
                 lambda: self._lock(strategy), lambda: None)

    def _lock(self, strategy):
        for group in self.groups:
            for variable, mask in zip(group.variables, self._kept(group)):
                self.masks[id(variable)].assign(mask)
                _assign_masked(strategy, variable, mask)
        self.run.assign(_with(self.run, LOCKED, 1))

    def thresholds(self, learning_rate):
        """Each group's zeroing threshold on `|w| / u` (0 once locked)."""
        if bool(ops.convert_to_numpy(self.locked)):
            return [0.0] * len(self.groups)
        scales = np.exp(ops.convert_to_numpy(self.field(LOG_SCALE)))
        taus = ops.convert_to_numpy(self.field(TAU))
        return [float(taus[i]) if group.k == 0 else float(zeroing_threshold(
            learning_rate * scales[i], group.k))
            for i, group in enumerate(self.groups)]


def lowest(scores, count):
    """True at the `count` smallest of `scores` (a float32 vector of values
    >= 0, +inf allowed), ties going to the lower index: the same choice as
    `tf.math.top_k(-scores, count)`, without its sort.

    A binary search on the float bits (for floats >= 0 their int32 bit
    patterns are in the same order) finds the count-th smallest value in 31
    counting passes, compiled by XLA: 1.4 s for ResNet50's 23.5M kernel
    weights on 2 CPU cores, where `top_k` with k = half of them takes 33 s.
    """
    if keras.backend.backend() != "tensorflow":
        # Inside the step that jax.jit compiles (PyTorch: run eagerly).
        scores = ops.cast(scores, "float32")
        if count <= 0:
            return ops.zeros(ops.shape(scores), "bool")
        return _lowest_ops(scores, count, "int32")
    if count <= 0:
        return tf.zeros(tf.shape(scores), tf.bool)
    return _lowest(tf.convert_to_tensor(scores, tf.float32),
                   tf.constant(count, tf.int64))


def _lowest_ops(scores, count, dtype="int64"):
    """`lowest`'s search in keras.ops; counts in `dtype` (JAX keeps no
    64-bit integers by default: int32 there, up to 2^31 weights)."""
    bits = ops.view(scores, "int32")

    def narrow(low, high):
        middle = low + (high - low) // 2
        enough = ops.greater_equal(ops.sum(ops.cast(
            ops.less_equal(bits, middle), dtype)), count)
        return (ops.where(enough, low, middle + 1),
                ops.where(enough, middle, high))

    # The smallest bit pattern b with at least `count` values <= b.
    _, value = ops.while_loop(
        lambda low, high: ops.less(low, high), narrow,
        (ops.convert_to_tensor(0, "int32"),
         ops.convert_to_tensor(2 ** 31 - 1, "int32")))
    below = ops.less(bits, value)
    ties = ops.equal(bits, value)
    needed = count - ops.sum(ops.cast(below, dtype))
    rank = ops.cumsum(ops.cast(ties, dtype))
    return ops.logical_or(below, ops.logical_and(ties, rank <= needed))


# On TensorFlow, XLA-compiled on its own (on JAX it is part of the step).
_lowest = tf.function(_lowest_ops, jit_compile=True, autograph=False)


def _assign_masked(strategy, variable, mask):
    strategy.extended.update(
        variable.value, lambda value, mask: value.assign(
            ops.where(mask, value, ops.zeros_like(value))),
        args=(mask,), group=False)


def _check_target(name, value):
    if (isinstance(value, bool) or not isinstance(value, (int, float))
            or not 0 < value < 1):
        raise _validation.invalid(name, "a number strictly between 0 and 1",
                                  value)
    return float(value)


def _check_step(name, value, allow_none):
    if value is None and allow_none:
        return None
    if (isinstance(value, bool) or not isinstance(value, numbers.Integral)
            or value < 0):
        raise _validation.invalid(
            name, "an integer >= 0" + (" or None" if allow_none else ""),
            value)
    return int(value)


class SparsityTarget(keras.callbacks.Callback):
    """Drives proximal Lk training to exactly the requested fraction of zeros.

    It covers the weights whose regularizer is `LkRegularizer(k <= 1,
    proximal=True)` (k > 1 never gives zeros), trained by a
    `ProximalOptimizer`. Their sparsity (fraction of exact zeros) follows a
    schedule from its value at `begin_step` to `target` at `end_step`,
    polynomial as in gradual magnitude pruning (Zhu and Gupta, 2017,
    "To prune or not to prune"). At `end_step` the zero pattern is locked:
    exactly `round(target * n)` of the covered weights are zero; those stay
    zero and the others fine-tune without the penalty for the rest of the
    fit.

    The controller runs inside the compiled train step and sets the
    proximal strength itself: the regularizer's alpha and reduction do not
    matter under it (they do outside it). For k > 0 it raises the strength
    when there are too few zeros and lowers it when there are too many. For
    k = 0 (`LkRegularizer(k=0, proximal=True)`) it is gradual magnitude
    pruning: the threshold is the scheduled quantile of `|w|`.

    Allocation (how the zeros are shared among layers):
    - `"global"`: one threshold on `|w|` for all covered weights, as global
      magnitude pruning. Layers whose weights matter less get more zeros.
    - `"uniform"`: every layer reaches the target on its own (tfmot's
      `prune_low_magnitude` with one schedule per layer).
    - `"normalized"`: one threshold on `|w| / rms(layer)`, each layer's
      weights measured in units of their RMS at `begin_step`.

    A dict target gives each layer (by its path, e.g. `"encoder/dense"`) its
    own target, reached on its own.

    No layer collapses: each output unit's largest weight (the largest
    `|w|` over every axis but the last; a vector's largest element) is never
    zeroed, so every unit of every layer keeps an input and every output of
    the model depends on the data. If a target leaves fewer weights than
    that, the group ends with those protected weights (a sparsity below the
    target). Where a layer keeps about one weight per unit, that makes its
    survivors one per unit rather than its largest; `protect="outputs"`
    keeps every unit's largest weight only in the layers that produce the
    model's outputs (the units that feed the loss) and each other weight's
    single largest element (no layer is emptied; a hidden unit may lose
    every input): gradual magnitude pruning as tfmot does it, with every
    output still connected.

    Logs `sparsity` (the covered weights' fraction of zeros) and
    `sparsity_target` (the schedule's value) to the `logs` dict at each
    epoch and, with `log_dir`, to TensorBoard: `sparsity/<group>`,
    `sparsity_target/<group>` and `zeroing_threshold/<group>`, the largest
    `|w| / u` the proximal step sets to 0 (0 once locked). `<group>` is
    `(all layers)` for a `"global"` or `"normalized"` target, else the
    layer's path.

    Runs on the TensorFlow, JAX and PyTorch backends, with the same zeros
    from the same starting weights (tested). On JAX the controller's state
    is among the optimizer's variables, which the stateless step carries,
    and each batch's start reads the running fit's state back (as every
    Keras callback that reads the model does on JAX); PyTorch runs the same
    step eagerly.

    Args:
        target: The fraction of zeros, strictly between 0 and 1, or a dict
            `{layer path: fraction}`.
        begin_step: The optimizer iteration at which the schedule starts.
            Defaults to None: the iteration at the start of `fit`.
        end_step: The iteration at which the target is reached and the
            pattern locked. Defaults to None: `begin_step` plus 3/4 of the
            fit's updates (its batches, divided by the wrapped optimizer's
            `gradient_accumulation_steps`), leaving the last quarter to
            fine-tune.
        allocation: `"global"`, `"uniform"` or `"normalized"`. Defaults to
            `"global"`.
        protect: `"units"` (every unit of every covered layer keeps its
            largest weight) or `"outputs"` (only the units of the layers
            that produce the outputs of a Sequential or functional model;
            each other weight keeps its largest element). Defaults to
            `"units"`.
        log_dir: None, or a directory for TensorBoard logs (run `train`).
            Defaults to None.

    Raises:
        ValueError: At construction for a bad argument; at the start of
            `fit` when the model has no ProximalOptimizer, no proximal
            LkRegularizer with k <= 1, a proximal one with k > 1, weights of
            different k in one group, a target for a layer it does not
            have, or `protect="outputs"` on a model whose output layers it
            cannot find (a subclassed model, or a functional output layer
            without weights).

    Example:

    >>> import keras, keras_lk, numpy as np
    >>> model = keras.Sequential([keras.Input((20,)), keras.layers.Dense(
    ...     4, kernel_regularizer=keras_lk.LkRegularizer(
    ...         k=1, alpha=0.1, proximal=True))])
    >>> model.compile(keras_lk.ProximalOptimizer(keras.optimizers.SGD(0.1)),
    ...               "mse")
    >>> x = np.random.default_rng(0).normal(size=(64, 20))
    >>> _ = model.fit(x, x[:, :4], epochs=4, batch_size=8, verbose=0,
    ...               callbacks=[keras_lk.SparsityTarget(0.75)])
    >>> keras_lk.sparsity(model)["total"]["fraction"]
    0.75
    """

    def __init__(self, target, begin_step=None, end_step=None,
                 allocation="global", log_dir=None, protect="units"):
        require_backend("keras_lk.SparsityTarget")
        super().__init__()
        if isinstance(target, dict):
            if not target:
                raise _validation.invalid(
                    "target", "a fraction or a non-empty dict", target)
            self.target = {str(k): _check_target(f"target[{k!r}]", v)
                           for k, v in target.items()}
        else:
            self.target = _check_target("target", target)
        self.begin_step = _check_step("begin_step", begin_step, True)
        self.end_step = _check_step("end_step", end_step, True)
        if (self.begin_step is not None and self.end_step is not None
                and self.end_step <= self.begin_step):
            raise _validation.invalid(
                "end_step", f"an integer > begin_step={begin_step}", end_step)
        self.allocation = _validation.check_choice("allocation", allocation,
                                                   ALLOCATIONS)
        self.protect = _validation.check_choice("protect", protect,
                                                PROTECTIONS)
        if log_dir is not None and (not isinstance(log_dir, (str, os.PathLike))
                                    or not str(log_dir)):
            raise _validation.invalid("log_dir", "None or a directory path",
                                      log_dir)
        self.log_dir = None if log_dir is None else os.fspath(log_dir)
        self._controller = None
        self._optimizer = None
        self._writer = None

    def on_train_begin(self, logs=None):
        model = self.model
        self._optimizer = self._proximal_optimizer(model)
        if not self._optimizer.built:
            model.optimizer.build(model.trainable_variables)
        groups = self._groups(model)
        per_unit = None
        if self.protect == "outputs":
            facing = {id(v) for v in _output_weights(model)}
            per_unit = {id(v): id(v) in facing
                        for group in groups for v in group.variables}
        strategy = getattr(model, "distribute_strategy", None)
        with (strategy.scope() if strategy is not None
              else contextlib.nullcontext()):
            self._controller = _Controller(groups, self._optimizer,
                                           per_unit)
        self._controller.window = max(
            1, int(getattr(model, "steps_per_execution", 1) or 1))
        self._started = False
        self._optimizer._set_controller(self._controller)
        # The step traced so far has no controller in it.
        model.make_train_function(force=True)
        if self.log_dir is not None:
            check_writable(self.log_dir)
            self._writer = RunWriter(os.path.join(self.log_dir, tags.TRAIN))

    def on_epoch_begin(self, epoch, logs=None):
        # At the first epoch, after every callback's on_train_begin: a
        # BackupAndRestore there may have restored the optimizer's state.
        if self._started:
            return
        self._started = True
        run = ops.convert_to_numpy(self._controller.run)
        if (epoch > 0 and run[UNFINISHED] == 1
                and run[SETTINGS] == self._settings()):
            return  # resumed: schedule, strengths and masks as saved
        self._start_run()

    def _settings(self):
        """A number that identifies this callback's settings."""
        groups = [(g.name, g.target, g.k, g.size)
                  for g in self._controller.groups]
        # 31 bits: on JAX (no 64-bit integers by default) the run's state
        # is int32.
        return zlib.crc32(repr((groups, self.begin_step, self.end_step,
                                self.allocation, self.protect)).encode()
                          ) & 0x7FFFFFFF

    def _start_run(self):
        controller = self._controller
        iterations = int(ops.convert_to_numpy(self.model.optimizer.iterations))
        begin = iterations if self.begin_step is None else self.begin_step
        end = self.end_step
        if end is None:
            steps = (self.params or {}).get("steps") or 1
            epochs = (self.params or {}).get("epochs") or 1
            # Steps are batches; the schedule counts the optimizer's
            # updates, one per `gradient_accumulation_steps` batches.
            per_update = (self._optimizer.inner_optimizer
                          .gradient_accumulation_steps or 1)
            end = begin + max(1, int(0.75 * steps * epochs / per_update))
        if end <= begin:
            raise _validation.invalid(
                "end_step", f"an iteration after begin_step={begin}", end)
        units = {id(v): _unit(v) if self.allocation == "normalized" else 1.0
                 for group in controller.groups for v in group.variables}
        learning_rate = float(ops.convert_to_numpy(
            self._optimizer.inner_optimizer.learning_rate))
        controller.start_run(
            begin, end,
            [exact_zeros(group.variables)["fraction"]
             for group in controller.groups],
            [_initial_log_scale(group, units, end - begin, learning_rate)
             for group in controller.groups],
            units, self._settings())

    @staticmethod
    def _proximal_optimizer(model):
        for optimizer in optimizer_chain(getattr(model, "optimizer", None)):
            if isinstance(optimizer, ProximalOptimizer):
                return optimizer
        raise ValueError(
            "SparsityTarget needs a model compiled with keras_lk."
            "ProximalOptimizer, which applies the proximal steps that make "
            "exact zeros. Received: optimizer="
            f"{getattr(model, 'optimizer', None)!r}")

    def _covered(self, model):
        """`[(layer path, [variables])]` of the weights it covers."""
        layers = []
        for path, weights in weights_by_layer(model):
            covered = []
            for _, variable in weights:
                regularizer = unwrap(getattr(variable, "regularizer", None))
                if not (variable.trainable
                        and isinstance(regularizer, LkRegularizer)
                        and regularizer.proximal):
                    continue
                if regularizer.k > 1:
                    raise ValueError(
                        f"SparsityTarget covers proximal LkRegularizers with "
                        f"k <= 1: a proximal step with k > 1 never makes a "
                        f"weight exactly zero. Received: {regularizer!r} on "
                        f"weight {variable.path!r}")
                covered.append(variable)
            if covered:
                layers.append((path, covered))
        if not layers:
            raise ValueError(
                "SparsityTarget found no weight with a proximal LkRegularizer "
                "(k <= 1) in model "
                f"{model.name!r}: give the weights to sparsify "
                "LkRegularizer(k=1, 0.5 or 0, alpha=..., proximal=True).")
        return layers

    def _check_slots(self, layers):
        """Every covered weight has its state in the optimizer, made when
        the optimizer was built."""
        slots = self._optimizer._sparsity_slots
        late = [v.path for _, variables in layers for v in variables
                if id(v) not in slots]
        if late:
            raise ValueError(
                "SparsityTarget keeps each weight's state in the "
                "ProximalOptimizer's variables, made when it was built; "
                f"the weights {late} got their proximal LkRegularizer after "
                "that (attach after compile and fit, or after loading a "
                "model). Compile again with a new keras_lk.ProximalOptimizer"
                "(...) before this fit.")

    def _groups(self, model):
        """The `_Group`s of the covered weights, by allocation."""
        layers = self._covered(model)
        self._check_slots(layers)
        if isinstance(self.target, dict):
            known = {path for path, _ in layers}
            unknown = sorted(set(self.target) - known)
            if unknown:
                raise ValueError(
                    f"SparsityTarget has targets for layers without a "
                    f"proximal LkRegularizer (k <= 1): {unknown}. Layers it "
                    f"covers: {sorted(known)}")
            named = [(path, variables, self.target[path])
                     for path, variables in layers if path in self.target]
        elif self.allocation == "uniform":
            named = [(path, variables, self.target)
                     for path, variables in layers]
        else:
            named = [(tags.ALL_LAYERS, [v for _, variables in layers
                                        for v in variables], self.target)]
        groups = []
        for name, variables, target in named:
            ks = sorted({unwrap(v.regularizer).k for v in variables})
            if len(ks) > 1:
                raise ValueError(
                    f"SparsityTarget compares the weights of one group on one "
                    f"scale, which needs one k: group {name!r} has k in {ks}. "
                    f"Give them the same k, or use allocation='uniform' (a "
                    f"group per layer). Received: " + ", ".join(
                        f"{v.path}: {unwrap(v.regularizer)!r}"
                        for v in variables))
            groups.append(_Group(name, variables, target, ks[0]))
        return groups

    def on_train_batch_begin(self, batch, logs=None):
        iterations = self.model.optimizer.iterations  # (JAX: synced)
        if keras.backend.backend() != "tensorflow":
            # A copy: JAX's step donates its state's buffers, and two
            # variables must not share one.
            iterations = np.array(ops.convert_to_numpy(iterations), "int64")
        self._controller.heartbeat.assign(
            ops.convert_to_tensor(iterations, "int64"))

    def on_epoch_end(self, epoch, logs=None):
        logs = logs if logs is not None else {}
        controller = self._controller
        iterations = ops.convert_to_tensor(self.model.optimizer.iterations)
        scheduled = ops.convert_to_numpy(controller.scheduled(iterations))
        actual = [exact_zeros(group.variables)["fraction"]
                  for group in controller.groups]
        sizes = [group.size for group in controller.groups]
        logs[tags.LOG_SPARSITY] = sum(
            a * n for a, n in zip(actual, sizes)) / sum(sizes)
        logs[tags.LOG_SPARSITY_TARGET] = float(sum(
            s * n for s, n in zip(scheduled, sizes)) / sum(sizes))
        if self._writer is not None:
            thresholds = controller.thresholds(float(ops.convert_to_numpy(
                self._optimizer.inner_optimizer.learning_rate)))
            scalars = {}
            for index, group in enumerate(controller.groups):
                scalars[tags.tag(tags.SPARSITY, group.name)] = actual[index]
                scalars[tags.tag(tags.SPARSITY_TARGET, group.name)] = float(
                    scheduled[index])
                scalars[tags.tag(tags.ZEROING_THRESHOLD, group.name)] = (
                    thresholds[index])
            self._writer.scalars(scalars, epoch)

    def on_train_end(self, logs=None):
        if self._controller is not None:
            self._controller.finish_run()
        if self._optimizer is not None:
            self._optimizer._set_controller(None)
            # The next fit traces a step without the controller.
            self.model.make_train_function(force=True)
        if self._writer is not None:
            self._writer.close()
            self._writer = None


def _unit(variable):
    """A weight's RMS (1 if it is all zeros): its unit for "normalized"."""
    rms = float(np.sqrt(np.mean(np.square(variable.numpy().astype(
        "float64")))))
    return rms if rms > 0 else 1.0


def _initial_log_scale(group, units, span, learning_rate):
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
