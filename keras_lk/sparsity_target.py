"""`SparsityTarget`: drive proximal Lk training to a requested sparsity.

The controller runs inside the compiled train step, as part of
`ProximalOptimizer`'s proximal step, so it adds no host round trip:

- the scheduled sparsity follows gradual magnitude pruning's polynomial
  (Zhu and Gupta, 2017): `s(t) = target + (s0 - target) * (1 - p)^3`, with
  `p` the progress from `begin_step` to `end_step` and `s0` the sparsity at
  `begin_step`;
- every `CONTROL_EVERY` steps it counts each group's exact zeros and moves
  the group's proximal strength (a multiplier of alpha, kept as a log in a
  variable, so nothing is retraced) up when there are too few zeros and down
  when there are too many;
- at `end_step` it locks the pattern: exactly `round(target * n)` weights of
  each group are zero (the zeros first, then the smallest |w|), and from
  then on those stay 0 and the others train without the penalty.
"""

import contextlib
import math
import numbers
import os

import keras
import numpy as np
import tensorflow as tf
from keras import ops

from keras_lk import _validation
from keras_lk.attach import iter_layers
from keras_lk.optimizers import ProximalOptimizer, optimizer_chain
from keras_lk.regularizers import LkRegularizer, unwrap
from keras_lk.shipping import exact_zeros
from keras_lk.summary import RunWriter, check_writable

CONTROL_EVERY = 2
# The controller estimates each group's sparsity from this many weights at
# most (a fixed random sample; standard error under 0.4 points), so that
# steering costs the same for any model size. The lock counts exactly.
SAMPLE = 16384
# Per control step, log(strength) moves by GAIN times the sparsity error.
GAIN = 5.0
MAX_LOG_SCALE = 30.0
MAX_MOVE = 0.5
POWER = 3


class _Controller:
    """The controller's state: variables read and written in the step."""

    def __init__(self, groups, targets, begin_step, end_step, start,
                 log_scale):
        self.groups = groups            # [(name, [variables])]
        self.targets = targets          # [float], per group
        self.begin_step = begin_step
        self.end_step = end_step
        self.group_of = {id(v): index for index, (_, variables)
                         in enumerate(groups) for v in variables}
        self.sizes = [sum(math.prod(v.shape) for v in variables)
                      for _, variables in groups]
        def new(value, dtype):
            return keras.Variable(value, dtype=dtype, trainable=False)

        self.start = new(np.array(start, "float32"), "float32")
        self.log_scale = new(np.array(log_scale, "float32"), "float32")
        self.locked = new(False, "bool")
        # The iteration count at the last batch hook of the SparsityTarget
        # that owns this controller, and how many steps one hook covers
        # (steps_per_execution). A step more than `window` steps after the
        # last hook runs in a fit without that callback (one that raised
        # left the controller in the traced step): it is plain proximal
        # training there, untouched by the controller.
        self.heartbeat = new(np.array(-1, "int64"), "int64")
        self.window = 1
        self.masks = {id(v): new(np.ones(tuple(v.shape), bool), "bool")
                      for _, variables in groups for v in variables}
        rng = np.random.default_rng(0)
        self.samples = {}  # variable id -> flat indices, or None for all
        for (_, variables), size in zip(groups, self.sizes):
            for variable in variables:
                n = math.prod(variable.shape)
                if size <= SAMPLE:
                    self.samples[id(variable)] = None
                else:
                    count = max(1, round(SAMPLE * n / size))
                    self.samples[id(variable)] = np.sort(rng.choice(
                        n, size=count, replace=False)).astype("int32")

    def controls(self, variable):
        return id(variable) in self.group_of

    def scale(self, variable):
        """The multiplier of the weight's proximal strength."""
        return ops.exp(self.log_scale[self.group_of[id(variable)]])

    def step(self, strategy, variables, proximal, iterations):
        """The proximal step of `variables` under control, then control.

        Args:
            strategy: The distribution strategy (cross-replica context).
            variables: The weights with a proximal regularizer.
            proximal: `proximal(variable, scale=None)` applies the weight's
                proximal step, its strength multiplied by `scale`.
            iterations: The optimizer's iteration count after this step.
        """

        def steering():
            for variable in variables:
                proximal(variable, self.scale(variable)
                         if self.controls(variable) else None)

        def locked():
            for variable in variables:
                if not self.controls(variable):
                    proximal(variable)
                    continue
                strategy.extended.update(
                    variable.value, lambda value, mask: value.assign(
                        ops.where(mask, value, ops.zeros_like(value))),
                    args=(ops.convert_to_tensor(self.masks[id(variable)]),),
                    group=False)

        def plain():
            for variable in variables:
                proximal(variable)

        def steered():
            # One branch for all weights: a cond per weight costs step time.
            tf.cond(ops.convert_to_tensor(self.locked), locked, steering)
            self.after_step(strategy, iterations)

        tf.cond(self.engaged(iterations), steered, plain)

    def engaged(self, iterations):
        """Whether the step that brought the count to `iterations` runs in
        the owning callback's fit (see `heartbeat`)."""
        since = (ops.cast(iterations, "int64") - 1
                 - ops.convert_to_tensor(self.heartbeat))
        return ops.logical_and(ops.greater_equal(since, 0),
                               ops.less(since, self.window))

    def scheduled(self, iterations):
        """Each group's scheduled sparsity at step `iterations`."""
        span = max(self.end_step - self.begin_step, 1)
        progress = ops.clip((ops.cast(iterations, "float32")
                             - self.begin_step) / span, 0.0, 1.0)
        targets = ops.convert_to_tensor(np.array(self.targets, "float32"))
        return targets + (self.start - targets) * (1.0 - progress) ** POWER

    def zero_fractions(self):
        """Each group's fraction of zeros, estimated on the samples."""
        fractions = []
        for _, variables in self.groups:
            zeros, seen = 0, 0
            for variable in variables:
                values = ops.reshape(variable, (-1,))
                indices = self.samples[id(variable)]
                if indices is not None:
                    values = ops.take(values, indices)
                zeros += ops.sum(ops.cast(ops.equal(values, 0), "int32"))
                seen += int(values.shape[0])
            fractions.append(ops.cast(zeros, "float32") / seen)
        return ops.stack(fractions)

    def after_step(self, strategy, iterations):
        """Controls the strengths; locks the pattern at `end_step`."""
        locked = ops.convert_to_tensor(self.locked)

        def control():
            error = self.scheduled(iterations) - self.zero_fractions()
            # Bounded moves: the zeros follow the strength with a lag, and
            # a ReLU network whose weights all went to zero cannot recover.
            step = ops.clip(GAIN * error, -MAX_MOVE, MAX_MOVE)
            self.log_scale.assign(ops.clip(
                self.log_scale + step, -MAX_LOG_SCALE, MAX_LOG_SCALE))

        ops.cond(ops.logical_and(ops.logical_not(locked), ops.equal(
            iterations % CONTROL_EVERY, 0)), control, lambda: None)
        ops.cond(ops.logical_and(ops.logical_not(locked),
                                 iterations >= self.end_step),
                 lambda: self._lock(strategy), lambda: None)

    def _lock(self, strategy):
        for (_, variables), target, size in zip(self.groups, self.targets,
                                                self.sizes):
            flat = ops.concatenate([ops.reshape(ops.abs(v), (-1,))
                                    for v in variables])
            count = int(round(target * size))
            keep = np.ones(size, bool)
            if count:
                # The zeros first (|w| = 0), then the smallest |w|.
                _, smallest = tf.math.top_k(-flat, k=count)
                keep = tf.tensor_scatter_nd_update(
                    tf.ones(size, tf.bool), smallest[:, None],
                    tf.zeros(count, tf.bool))
            start = 0
            for variable in variables:
                n = math.prod(variable.shape)
                mask = ops.reshape(keep[start:start + n], variable.shape)
                start += n
                self.masks[id(variable)].assign(mask)
                strategy.extended.update(
                    variable.value, lambda value, mask: value.assign(
                        ops.where(mask, value, ops.zeros_like(value))),
                    args=(mask,), group=False)
        self.locked.assign(True)


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
    "To prune or not to prune"). The controller runs inside the compiled
    train step: every few steps it counts the zeros and raises the penalty's
    strength (a multiplier of each regularizer's alpha) when there are too
    few, lowers it when there are too many. At `end_step` the zero pattern
    is locked: exactly `round(target * n)` of the covered weights are zero
    (the existing zeros first, then the smallest |w|); those stay zero and
    the others fine-tune without the penalty for the rest of the fit.

    The target is global over all covered weights by default; with
    `per_layer=True` each layer reaches it on its own, and a dict gives
    each layer (by its path, e.g. `"encoder/dense"`) its own target.

    Logs `sparsity` (the covered weights' fraction of zeros) and
    `sparsity_target` (the schedule's value) to the `logs` dict at each
    epoch and, with `log_dir`, to TensorBoard: `sparsity/<group>`,
    `sparsity_target/<group>` and `alpha/<group>`, the effective alpha
    (alpha times the controller's multiplier; 0 once locked). `<group>` is
    `(all layers)` for a global target, else the layer's path.

    Args:
        target: The fraction of zeros, strictly between 0 and 1, or a dict
            `{layer path: fraction}`.
        begin_step: The optimizer iteration at which the schedule starts.
            Defaults to None: the iteration at the start of `fit`.
        end_step: The iteration at which the target is reached and the
            pattern locked. Defaults to None: `begin_step` plus 3/4 of the
            fit's steps, leaving the last quarter to fine-tune.
        per_layer: Whether each layer reaches `target` on its own. Defaults
            to False.
        log_dir: None, or a directory for TensorBoard logs (run `train`).
            Defaults to None.

    Raises:
        ValueError: At construction for a bad argument; at the start of
            `fit` when the model has no ProximalOptimizer, no proximal
            LkRegularizer with k <= 1, a proximal one with k > 1, or a
            target for a layer it does not have.

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
                 per_layer=False, log_dir=None):
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
        if not isinstance(per_layer, bool):
            raise _validation.invalid("per_layer", "True or False", per_layer)
        self.per_layer = per_layer
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
        groups = self._groups(model)
        iterations = int(ops.convert_to_numpy(model.optimizer.iterations))
        begin = iterations if self.begin_step is None else self.begin_step
        end = self.end_step
        if end is None:
            steps = (self.params or {}).get("steps") or 1
            epochs = (self.params or {}).get("epochs") or 1
            end = begin + max(1, int(0.75 * steps * epochs))
        if end <= begin:
            raise _validation.invalid(
                "end_step", f"an iteration after begin_step={begin}", end)
        targets = [self.target[name] if isinstance(self.target, dict)
                   else self.target for name, _ in groups]
        start = [exact_zeros(variables)["fraction"]
                 for _, variables in groups]
        strategy = getattr(model, "distribute_strategy", None)
        with (strategy.scope() if strategy is not None
              else contextlib.nullcontext()):
            self._controller = _Controller(
                groups, targets, begin, end, start,
                [_initial_log_scale(variables, target, end - begin,
                                    self._optimizer.inner_optimizer)
                 for (_, variables), target in zip(groups, targets)])
        self._controller.window = max(
            1, int(getattr(model, "steps_per_execution", 1) or 1))
        self._optimizer._set_controller(self._controller)
        # The step traced so far has no controller in it.
        model.make_train_function(force=True)
        if self.log_dir is not None:
            check_writable(self.log_dir)
            self._writer = RunWriter(os.path.join(self.log_dir, "train"))

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

    def _groups(self, model):
        """`[(group name, [variables])]` of the covered weights."""
        layers = []
        for path, layer in iter_layers(model):
            if isinstance(layer, keras.Model):
                continue
            covered = []
            for variable in layer.trainable_weights:
                regularizer = unwrap(getattr(variable, "regularizer", None))
                if not (isinstance(regularizer, LkRegularizer)
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
                "LkRegularizer(k=1 or 0.5, alpha=..., proximal=True).")
        if isinstance(self.target, dict):
            known = {path for path, _ in layers}
            unknown = sorted(set(self.target) - known)
            if unknown:
                raise ValueError(
                    f"SparsityTarget has targets for layers without a "
                    f"proximal LkRegularizer (k <= 1): {unknown}. Layers it "
                    f"covers: {sorted(known)}")
            return [(path, v) for path, v in layers if path in self.target]
        if self.per_layer:
            return layers
        return [("(all layers)", [v for _, variables in layers
                                  for v in variables])]

    def on_train_batch_begin(self, batch, logs=None):
        self._controller.heartbeat.assign(
            ops.convert_to_tensor(self.model.optimizer.iterations, "int64"))

    def on_epoch_end(self, epoch, logs=None):
        logs = logs if logs is not None else {}
        controller = self._controller
        iterations = ops.convert_to_tensor(self.model.optimizer.iterations)
        scheduled = ops.convert_to_numpy(controller.scheduled(iterations))
        actual = [exact_zeros(v)["fraction"] for _, v in controller.groups]
        sizes = controller.sizes
        logs["sparsity"] = sum(a * n for a, n in zip(actual, sizes)) / sum(
            sizes)
        logs["sparsity_target"] = float(sum(
            s * n for s, n in zip(scheduled, sizes)) / sum(sizes))
        if self._writer is not None:
            locked = bool(ops.convert_to_numpy(controller.locked))
            scales = np.exp(ops.convert_to_numpy(controller.log_scale))
            scalars = {}
            for index, (name, variables) in enumerate(controller.groups):
                alpha = np.mean([unwrap(v.regularizer).alpha
                                 for v in variables])
                scalars[f"sparsity/{name}"] = actual[index]
                scalars[f"sparsity_target/{name}"] = float(scheduled[index])
                scalars[f"alpha/{name}"] = (0.0 if locked
                                            else float(alpha * scales[index]))
            self._writer.scalars(scalars, epoch)

    def on_train_end(self, logs=None):
        if self._optimizer is not None:
            self._optimizer._set_controller(None)
            # The next fit traces a step without the controller.
            self.model.make_train_function(force=True)
        if self._writer is not None:
            self._writer.close()
            self._writer = None


def _initial_log_scale(variables, target, span, optimizer):
    """A first multiplier of the strength, before feedback corrects it.

    Over the schedule, the proximal steps shrink each weight by about the
    sum of their thresholds: start where that sum reaches the target's
    quantile of |w|, whatever alpha the user chose.
    """
    magnitudes = np.concatenate([np.abs(v.numpy()).ravel()
                                 for v in variables])
    quantile = float(np.quantile(magnitudes, target))
    learning_rate = float(ops.convert_to_numpy(optimizer.learning_rate))
    strengths = [float(unwrap(v.regularizer).proximal_strength(
        learning_rate, math.prod(v.shape))) for v in variables]
    if quantile <= 0 or min(strengths) <= 0:
        return 0.0
    sizes = [math.prod(v.shape) for v in variables]
    typical = math.exp(sum(n * math.log(t) for n, t in zip(sizes, strengths))
                       / sum(sizes))
    log_scale = math.log(quantile / span / typical)
    return min(max(log_scale, -MAX_LOG_SCALE), MAX_LOG_SCALE)
