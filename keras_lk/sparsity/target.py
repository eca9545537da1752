"""`SparsityTarget`: the callback that drives proximal Lk training to a
requested sparsity, and owns its controller for the duration of `fit`.

One path for weights and units: a run (`weights.WeightRun` or
`unit_run.UnitRun`) is the host side (the groups, the start, what each
epoch logs) and holds the controller that `ProximalOptimizer.steer` hands
the step to.
"""

import contextlib
import numbers
import os
import warnings
import zlib

import keras
from keras import ops

from keras_lk.core import backend, checks
from keras_lk.core.chain import proximal_optimizer
from keras_lk.monitoring import tags
from keras_lk.monitoring.summary import RunWriter, check_writable
from keras_lk.sparsity import state
from keras_lk.sparsity.groups import ALLOCATIONS
from keras_lk.sparsity.protection import PROTECTIONS
from keras_lk.sparsity.unit_run import UNIT_ALLOCATIONS, UnitRun
from keras_lk.sparsity.weights import WeightRun

# `target_flops` was renamed `target_macs` (it is a share of the
# multiply-accumulates); the old name warns once per process, which is
# what this flag exists for.
_warned_flops = []


def _check_target(name, value):
    if (isinstance(value, bool) or not isinstance(value, (int, float))
            or not 0 < value < 1):
        raise checks.invalid(name, "a number strictly between 0 and 1",
                                  value)
    return float(value)


def _check_step(name, value, allow_none):
    if value is None and allow_none:
        return None
    if (isinstance(value, bool) or not isinstance(value, numbers.Integral)
            or value < 0):
        raise checks.invalid(
            name, "an integer >= 0" + (" or None" if allow_none else ""),
            value)
    return int(value)


class SparsityTarget(keras.callbacks.Callback):
    """Drives proximal Lk training to exactly the requested fraction of zeros.

    It covers the weights whose regularizer is `LkRegularizer(k <= 1,
    proximal=True)`, trained by a `ProximalOptimizer`. Their fraction of
    exact zeros follows gradual magnitude pruning's polynomial schedule
    (Zhu and Gupta, 2017) from its value at `begin_step` to `target` at
    `end_step`. There the zero pattern is locked: exactly
    `round(target * n)` of the covered weights are zero, and they stay
    zero while the others fine-tune without the penalty.

    The controller runs inside the compiled train step and sets the
    proximal strength itself (alpha and reduction do not matter under
    it). For k > 0 it raises the strength when there are too few zeros and
    lowers it when there are too many; for k = 0 it is gradual magnitude
    pruning. No layer collapses: each output unit's largest weight is
    never zeroed (`protect="outputs"`: only in the layers that produce the
    model's outputs; each other weight keeps its largest element).

    Logs `sparsity` and `sparsity_target` to the `logs` dict at each epoch
    and, with `log_dir`, `sparsity/<group>`, `sparsity_target/<group>` and
    `zeroing_threshold/<group>` to TensorBoard. Runs on TensorFlow, JAX and
    PyTorch, with the same zeros from the same starting weights. The guide
    "Sparsity targets" covers allocation, protection and the lock.

    Args:
        target: The fraction of zeros, strictly between 0 and 1, or a dict
            `{layer path: fraction}` (each layer reaches its own).
        begin_step: The optimizer iteration at which the schedule starts.
            Defaults to None: the iteration at the start of `fit`.
        end_step: The iteration at which the target is reached and the
            pattern locked. Defaults to None: `begin_step` plus 3/4 of the
            fit's updates (its batches, divided by the wrapped optimizer's
            `gradient_accumulation_steps`), leaving the last quarter to
            fine-tune.
        allocation: `"global"` (one threshold on `|w|` for every covered
            weight), `"uniform"` (every layer reaches the target on its
            own) or `"normalized"` (one threshold on `|w| / rms(layer)`).
            Defaults to `"global"`. With `structure="units"`: `"uniform"`
            (every group loses the same fraction of its units; the
            default), `"global"` (all units ranked together by their RMS
            weight, `||w_u|| / sqrt(weights per unit)`) or `"adaptive"`
            (ranked together by LAMP score: a unit's squared norm over the
            sum of those at least as large in its group); `target` is then
            the fraction of all covered units removed, and every group
            keeps at least its largest unit.
        protect: `"units"` (every unit of every covered layer keeps its
            largest weight) or `"outputs"` (only the units of the layers
            that produce the outputs of a Sequential or functional model;
            each other weight keeps its largest element). Defaults to
            `"units"`.
        log_dir: None, or a directory for TensorBoard logs (run `train`).
            Defaults to None.
        structure: None (weights), or `"units"`: whole units, channels and
            heads (the unit groups of `keras_lk.unit_groups`). Then the
            model carries the group penalty of `keras_lk.attach(model,
            LkRegularizer(k <= 1, alpha, proximal=True),
            structure="units")`, `target` is the fraction of units to
            remove (see `allocation`), each group keeps its
            largest unit while the schedule runs, and at `end_step`
            exactly that many units are zero in every slice, so that
            `keras_lk.shrink` rebuilds a smaller model with the same
            outputs. Logs the fraction of zero units as `sparsity`, the
            live fraction of multiply-accumulates as `live_macs_frac`,
            and, with `log_dir`, `live_units/<group>`,
            `live_macs_fraction/(all layers)` and histograms of the unit
            norms (`unit_norms/<group>`). Defaults to None.
        target_macs: With `structure="units"`, instead of `target`: the
            fraction of the model's multiply-accumulates (`keras_lk.macs`)
            to remove, e.g. 0.5. With allocation `"uniform"` the one
            fraction of units that every covered group loses is chosen at
            the start of `fit` to remove at least that much; with a
            ranking across groups the lowest ranked units go until that
            share is removed (counted exactly as `keras_lk.macs` does).
            Logs then `live_macs_frac_target`, the scheduled share left.
            Defaults to None.
        target_flops: The former name of `target_macs`, still accepted
            with a DeprecationWarning (once). Defaults to None.

    Raises:
        ValueError: At construction for a bad argument; at the start of
            `fit` when the model has no ProximalOptimizer, no proximal
            LkRegularizer with k <= 1, a proximal one with k > 1, weights of
            different k in one group, a target for a layer it does not
            have, or `protect="outputs"` on a model whose output layers it
            cannot find (a subclassed model, or a functional output layer
            without weights).

    Examples:

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

    def __init__(self, target=None, begin_step=None, end_step=None,
                 allocation=None, log_dir=None, protect="units",
                 structure=None, target_macs=None, target_flops=None):
        backend.require_training("keras_lk.SparsityTarget")
        super().__init__()
        if target_flops is not None:
            if target_macs is not None:
                raise ValueError(
                    "target_flops is the old name of target_macs: give one. "
                    f"Received: target_macs={target_macs!r}, "
                    f"target_flops={target_flops!r}")
            target_macs = target_flops
        if structure is not None and structure != "units":
            raise checks.invalid("structure", "None or 'units'", structure)
        self.structure = structure
        self.target_macs = None
        if target_macs is not None:
            if self.structure != "units":
                raise ValueError(
                    "target_macs counts multiply-accumulates of whole "
                    "units: it needs structure='units'. Received: "
                    f"target_macs={target_macs!r}, structure={structure!r}")
            if target is not None:
                raise ValueError(
                    "Give either target (a fraction of units) or "
                    "target_macs (a fraction of multiply-accumulates), not "
                    f"both. Received: target={target!r}, "
                    f"target_macs={target_macs!r}")
            self.target_macs = _check_target("target_macs", target_macs)
        elif target is None:
            raise checks.invalid(
                "target", "a number strictly between 0 and 1" + (
                    " (or target_macs=)" if self.structure else ""), target)
        if self.structure == "units":
            if isinstance(target, dict):
                raise checks.invalid(
                    "target", "a fraction of units with structure='units'",
                    target)
            allocation = checks.check_choice(
                "allocation", allocation or "uniform", UNIT_ALLOCATIONS)
            if protect != "units":
                raise checks.invalid(
                    "protect", "'units' with structure='units' (each group "
                    "keeps its largest unit)", protect)
        elif allocation == "adaptive":
            raise checks.invalid(
                "allocation", "'global', 'uniform' or 'normalized' without "
                "structure ('adaptive' ranks whole units: structure='units')",
                allocation)
        allocation = allocation or "global"
        if target is None:
            self.target = None
        elif isinstance(target, dict):
            if not target:
                raise checks.invalid(
                    "target", "a fraction or a non-empty dict", target)
            self.target = {str(k): _check_target(f"target[{k!r}]", v)
                           for k, v in target.items()}
        else:
            self.target = _check_target("target", target)
        self.begin_step = _check_step("begin_step", begin_step, True)
        self.end_step = _check_step("end_step", end_step, True)
        if (self.begin_step is not None and self.end_step is not None
                and self.end_step <= self.begin_step):
            raise checks.invalid(
                "end_step", f"an integer > begin_step={begin_step}", end_step)
        self.allocation = checks.check_choice(
            "allocation", allocation,
            UNIT_ALLOCATIONS if self.structure else ALLOCATIONS)
        self.protect = checks.check_choice("protect", protect,
                                                PROTECTIONS)
        if log_dir is not None and (not isinstance(log_dir, (str, os.PathLike))
                                    or not str(log_dir)):
            raise checks.invalid("log_dir", "None or a directory path",
                                      log_dir)
        self.log_dir = None if log_dir is None else os.fspath(log_dir)
        self._run = None
        self._optimizer = None
        self._writer = None
        self._started = False
        if target_flops is not None and not _warned_flops:
            _warned_flops.append(True)
            warnings.warn(
                "SparsityTarget(target_flops=...) is deprecated: it is a "
                "share of the multiply-accumulates, now named target_macs.",
                DeprecationWarning, stacklevel=2)

    @property
    def target_flops(self):
        """The old name of `target_macs`."""
        return self.target_macs

    @target_flops.setter
    def target_flops(self, value):
        self.target_macs = value

    def on_train_begin(self, logs=None):
        model = self.model
        self._optimizer = self._proximal_optimizer(model)
        if not self._optimizer.built:
            model.optimizer.build(model.trainable_variables)
        # The penalties the weights carry now (attach may follow compile).
        self._optimizer.find_proximal(model.trainable_variables)
        # Built in the model's distribution strategy, as its variables.
        strategy = getattr(model, "distribute_strategy", None)
        with (strategy.scope() if strategy is not None
              else contextlib.nullcontext()):
            if self.structure == "units":
                self._run = UnitRun(model, self._optimizer, self.target,
                                    self.target_macs, self.allocation)
            else:
                self._run = WeightRun(model, self._optimizer, self.target,
                                      self.allocation, self.protect)
        controller = self._run.controller
        controller.window = max(
            1, int(getattr(model, "steps_per_execution", 1) or 1))
        self._started = False
        self._optimizer.steer(controller.steers, controller)
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
        unfinished, settings = self._run.controller.run.host()
        if epoch > 0 and unfinished == 1 and settings == self._settings():
            return  # resumed: schedule, strengths and masks as saved
        self._start_run()

    def _settings(self):
        """A number that identifies this callback's settings."""
        # 31 bits: on JAX (no 64-bit integers by default) the run's state
        # is int32.
        # The state's layout is part of it: a run saved in another layout
        # starts afresh.
        return zlib.crc32(repr((self._run.describe(), self.begin_step,
                                self.end_step, self.allocation,
                                self.protect, state.FIELDS)).encode()
                          ) & 0x7FFFFFFF

    def _learning_rate(self):
        return float(ops.convert_to_numpy(
            self._optimizer.inner_optimizer.learning_rate))

    def _start_run(self):
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
            raise checks.invalid(
                "end_step", f"an iteration after begin_step={begin}", end)
        self._run.start(begin, end, self._learning_rate(), self._settings())

    @staticmethod
    def _proximal_optimizer(model):
        optimizer = proximal_optimizer(getattr(model, "optimizer", None))
        if optimizer is not None:
            return optimizer
        raise ValueError(
            "SparsityTarget needs a model compiled with keras_lk."
            "ProximalOptimizer, which applies the proximal steps that make "
            "exact zeros. Received: optimizer="
            f"{getattr(model, 'optimizer', None)!r}")

    def on_train_batch_begin(self, batch, logs=None):
        iterations = backend.current().detached(
            self.model.optimizer.iterations)  # (JAX: synced)
        self._run.controller.heartbeat.assign(
            ops.convert_to_tensor(iterations, "int64"))

    def on_epoch_end(self, epoch, logs=None):
        logs = logs if logs is not None else {}
        iterations = ops.convert_to_tensor(self.model.optimizer.iterations)
        run_logs, scalars, histograms = self._run.epoch(
            iterations,
            None if self._writer is None else self._learning_rate())
        logs.update(run_logs)
        if self._writer is not None:
            self._writer.scalars(scalars, epoch)
            if histograms:
                self._writer.histograms(histograms, epoch)

    def on_train_end(self, logs=None):
        if self._run is not None:
            self._run.controller.finish_run()
        if self._optimizer is not None and self._run is not None:
            self._optimizer.steer(self._run.controller.steers, None)
            # The next fit traces a step without the controller.
            self.model.make_train_function(force=True)
        if self._writer is not None:
            self._writer.close()
            self._writer = None
