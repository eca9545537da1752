"""`ProximalOptimizer`: proximal Lk steps after any Keras optimizer's step."""

import functools
import math
import warnings

import keras
import numpy as np
from keras import ops

from keras_lk.core import backend, checks
from keras_lk.core.chain import optimizer_chain, unwrap
from keras_lk.core.handled import mark_proximal_handled
from keras_lk.penalties.plan import UnitPlan
from keras_lk.penalties.prox import (half_threshold_newton, hard_threshold,
                                     prox, soft_threshold)
from keras_lk.penalties.regularizers import LkRegularizer

# What `steer` can hand over: the steps of the weights with a proximal
# LkRegularizer, and those of the unit groups.
STEERED = ("weights", "units")

# The proximal steps with a fast form: k -> function(y, t).
_FAST_PROX = {0.0: hard_threshold, 1.0: soft_threshold,
              0.5: half_threshold_newton}


def _fast(k, exempt):
    """`(y, t[, exempt, enabled]) -> new y` of a fast form, fused into one
    pass where the backend would run each operation apart."""
    function = _FAST_PROX[k]
    if not exempt:
        return backend.current().fuse(
            lambda y, t: function(y, ops.cast(t, y.dtype)), key=("prox", k))
    return backend.current().fuse(
        lambda y, t, exempt, enabled: ops.where(
            ops.logical_and(exempt, enabled), y,
            function(y, ops.cast(t, y.dtype))), key=("prox exempt", k))


def proximal_update(value, t, k, exempt=None, enabled=True):
    """`prox(value, t, k)`, leaving `value` where the bool `exempt` is True
    (and the scalar bool `enabled` holds), in the fastest form the backend
    runs: eager steps (PyTorch) take k = 1/2's closed form, with fewer
    operations than Newton's steps; compiled ones take Newton's, which XLA
    fuses into one cheaper pass."""
    eager_half = k == 0.5 and backend.current().eager
    if k not in _FAST_PROX or eager_half:
        new = prox(value, t, k)
        if exempt is None:
            return new
        return ops.where(ops.logical_and(exempt, enabled), value, new)
    if exempt is None:
        return _fast(k, False)(value, t)
    return _fast(k, True)(value, t, ops.convert_to_tensor(exempt),
                          ops.convert_to_tensor(enabled))


def _proximal_regularizer(variable):
    regularizer = unwrap(getattr(variable, "regularizer", None))
    if isinstance(regularizer, LkRegularizer) and regularizer.proximal:
        return regularizer
    return None


@keras.saving.register_keras_serializable(package="keras_lk")
class ProximalOptimizer(keras.optimizers.Optimizer):
    """Wraps a Keras optimizer; adds the proximal step of Lk penalties.

    After each step of the wrapped optimizer, every trainable weight whose
    regularizer is `LkRegularizer(..., proximal=True)` is set to
    `prox(w, t, k)` with `t = lr_t * alpha / n` (reduction "mean", n the
    weight's size) or `t = lr_t * alpha` (reduction "sum", and k = inf),
    where `lr_t` is the learning rate of that step (schedules honoured). For
    k <= 1 this sets weights exactly to zero, which (sub)gradient descent
    never does. It all runs inside the compiled train step.

    With Adam and other adaptive optimizers the proximal step is decoupled
    from the adaptive scaling, as Keras applies `weight_decay`: `t` uses the
    raw learning rate, not Adam's per-weight step size (as in AdamW). At
    Adam's usual small learning rates the thresholds are small: expect fewer
    zeros than with SGD.

    It works in every Keras training setup:
    - `jit_compile=True` (the default on a GPU);
    - mixed precision: `compile` under the `mixed_float16` policy wraps it
      in a `LossScaleOptimizer`, and so can you
      (`LossScaleOptimizer(ProximalOptimizer(opt))`); a step the loss
      scaler skips (non-finite gradients) skips the proximal step too.
      `ProximalOptimizer(LossScaleOptimizer(opt))` raises a ValueError;
    - `use_ema=True` on the wrapped optimizer: when `fit` swaps the moving
      averages into the weights, weights that training left at exactly 0
      stay 0;
    - `gradient_accumulation_steps=N` on the wrapped optimizer: the
      proximal step runs once per real update, with its learning rate;
    - `tf.distribute` strategies (MirroredStrategy and the like): the step
      is applied to every replica's copy of the weight.

    Weights without a proximal regularizer are trained by the wrapped
    optimizer alone. The wrapper saves to `.keras` with the model and loads
    back (keras_lk imported), and training continues from there. Runs on
    the TensorFlow, JAX and PyTorch backends; on JAX the proximal step (and
    `SparsityTarget`'s controller) is part of the optimizer's
    `stateless_apply`, and `keras.distribution`'s `DataParallel` gives the
    same zeros as one device; PyTorch runs the same step eagerly.

    Args:
        optimizer: A `keras.optimizers.Optimizer` instance: SGD, Adam, ...
        name: Name of the wrapper. Defaults to `"proximal_<inner name>"`.

    Examples:

        >>> import keras, keras_lk, numpy as np
        >>> model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(
        ...     1, kernel_regularizer=keras_lk.LkRegularizer(
        ...         k=1, alpha=60.0, proximal=True))])
        >>> model.compile(keras_lk.ProximalOptimizer(keras.optimizers.SGD(0.1)),
        ...               "mse")
        >>> _ = model.fit(np.ones((8, 3)), np.zeros((8, 1)), epochs=2, verbose=0)
        >>> int((model.layers[0].kernel.numpy() == 0).sum())  # exact zeros
        3
    """

    # What the regularizers and callbacks look for along an optimizer chain.
    applies_proximal_steps = True

    def __init__(self, optimizer, name=None, **kwargs):
        backend.require_training("keras_lk.ProximalOptimizer")
        if not isinstance(optimizer, keras.optimizers.Optimizer) or isinstance(
                optimizer, ProximalOptimizer):
            raise checks.invalid(
                "optimizer", "a keras.optimizers.Optimizer instance (not "
                "already a ProximalOptimizer)", optimizer)
        if any(isinstance(inner, keras.optimizers.LossScaleOptimizer)
               for inner in optimizer_chain(optimizer)):
            raise ValueError(
                "ProximalOptimizer must be inside the LossScaleOptimizer, "
                "not around it: the loss scaler skips steps with non-finite "
                "gradients, and the proximal step must be skipped with them. "
                "Use keras.optimizers.LossScaleOptimizer(keras_lk."
                "ProximalOptimizer(optimizer)), or pass ProximalOptimizer("
                "optimizer) to compile under the mixed_float16 policy, which "
                f"wraps it. Received: optimizer={optimizer!r}")
        if kwargs:
            raise ValueError(
                "ProximalOptimizer takes no optimizer arguments of its own; "
                f"set them on the wrapped optimizer. Received: {sorted(kwargs)}")
        super().__init__(learning_rate=0.0,
                         name=name or f"proximal_{optimizer.name}")
        self.inner_optimizer = optimizer
        self._proximal = {}
        self.unit_plan = None
        self._unit_key = None
        self._states = {}
        self.steering = {}  # kind -> what steers that kind's steps

    def find_proximal(self, var_list):
        """Finds the proximal regularizers the weights carry now: `attach` and
        `detach` after the optimizer was built (after `compile` and a fit,
        or after loading) reset the train step, whose next trace reads
        them here again."""
        self._proximal = {}
        for variable in var_list:
            regularizer = _proximal_regularizer(variable)
            if regularizer is not None:
                self._proximal[id(variable)] = regularizer
                mark_proximal_handled(variable)
        # The unit groups of `attach(..., structure="units")`, joined again
        # only when the group penalties changed.
        key = tuple((id(v), id(unwrap(getattr(v, "regularizer", None))))
                    for v in var_list)
        if key != self._unit_key:
            self._unit_key = key
            self.unit_plan = UnitPlan.build(var_list)
        if self.unit_plan is not None:
            for variable in self.unit_plan.variables:
                mark_proximal_handled(variable)

    # What keeps state among this optimizer's variables: `{name: build}`,
    # registered by the rooms that steer the proximal step (`keep_state`).
    # The registry exists because the state must be made when the optimizer
    # is built, before any callback exists: Keras saves, loads and restores (BackupAndRestore) only the
    # variables an optimizer has, and makes them in `build`.
    _state_builders = {}

    @classmethod
    def keep_state(cls, name, build):
        """Registers state that every `ProximalOptimizer` keeps among its
        variables, made when it is built.

        Args:
            name: The state's name, for `state(name)`.
            build: `build(optimizer, variables, plan) -> state or None`:
                `variables` are the weights with a proximal
                `LkRegularizer`, `plan` the `UnitPlan` of the proximal
                group penalties (or None); it makes its variables with
                `optimizer.add_variable`.
        """
        cls._state_builders[name] = build

    def state(self, name):
        """The state registered as `name` (see `keep_state`), or None."""
        return self._states.get(name)

    def steer(self, kind, steering):
        """Hands the proximal steps of one kind to `steering`, or (None)
        back to the penalties' own strengths.

        `kind` is `"weights"` (the weights with a proximal
        `LkRegularizer`) or `"units"` (the groups of `unit_plan`);
        `steering.step(optimizer, variables, learning_rate, iterations,
        condition)` assigns their new values in the train step, where
        `condition` holds (None: always). A units steering has the `plan`
        it was made for, and steps only while that is this optimizer's
        `unit_plan` (attach or detach during a fit makes a new one). The
        train step must be traced again after a change
        (`model.make_train_function(force=True)`).
        """
        kind = checks.check_choice("kind", kind, STEERED)
        if steering is not None and not callable(
                getattr(steering, "step", None)):
            raise checks.invalid(
                "steering", "None or an object with a step(optimizer, "
                "variables, learning_rate, iterations, condition) method",
                steering)
        self.steering[kind] = steering

    def build(self, var_list):
        """Builds the wrapped optimizer, then this one's state: whatever
        was registered with `keep_state` (SparsityTarget's state of the
        weights with a proximal regularizer and of the unit groups), kept
        with the optimizer's own so that BackupAndRestore and `.keras`
        files keep it."""
        self.inner_optimizer.build(var_list)
        self.find_proximal(var_list)
        super().build(var_list)
        weights = [v for v in var_list if id(v) in self._proximal]
        self._states = {name: build(self, weights, self.unit_plan)
                        for name, build in self._state_builders.items()}

    def apply(self, grads, trainable_variables=None):
        if not self.built:
            self.build(trainable_variables)
            self.built = True
        else:  # build found them; since, attach/detach may have changed them
            self.find_proximal(trainable_variables
                                or self._trainable_variables)
        inner = self.inner_optimizer
        # The rate of this step: read it before the step advances schedules.
        learning_rate = ops.convert_to_tensor(inner.learning_rate)
        # Under gradient accumulation `iterations` counts real updates only.
        before = ops.convert_to_tensor(inner.iterations)
        inner.apply(grads, trainable_variables)
        updated = ops.greater(ops.convert_to_tensor(inner.iterations), before)
        variables = [v for v in trainable_variables or self._trainable_variables
                     if id(v) in self._proximal]
        if variables:
            backend.current().in_update_context(
                functools.partial(self._step, "weights"), variables,
                learning_rate, updated)
        if self.unit_plan is not None:
            backend.current().in_update_context(
                functools.partial(self._step, "units"),
                self.unit_plan.variables, learning_rate, updated)

    def _step(self, kind, variables, learning_rate, updated):
        """The proximal steps of one kind (`"weights"`: `w <- prox(w, t,
        k)`; `"units"`: every unit group's step, from the norms after the
        wrapped optimizer's step), after real updates only (under gradient
        accumulation a step that only accumulates takes none); by the
        steering of that kind, if one is set (`steer`)."""
        condition = (updated if self.inner_optimizer
                     .gradient_accumulation_steps else None)
        steering = self.steering.get(kind)
        if steering is not None and (
                kind == "weights" or steering.plan is self.unit_plan):
            iterations = ops.convert_to_tensor(self.inner_optimizer.iterations)
            steering.step(self, variables, learning_rate, iterations,
                          condition)
            return
        if kind == "units":
            plan = self.unit_plan

            def new_values():
                return plan.step(learning_rate, lambda v: v.value)
        else:
            def new_values():
                return [self.proximal_step(v, v.value, learning_rate)
                        for v in variables]
        backend.current().assign(variables, new_values, condition)

    def proximal_step(self, variable, value, learning_rate, strength=None,
                      exempt=None, enabled=True):
        """The new value of `variable` (now `value`) after its proximal
        step: `prox(value, t, k)` with `t = strength(learning_rate)`, or
        its regularizer's strength; where the bool `exempt` is True (and
        the scalar `enabled` holds), `value` stays."""
        regularizer = self._proximal[id(variable)]
        t = (regularizer.proximal_strength(
            learning_rate, math.prod(variable.shape))
            if strength is None else strength(learning_rate))
        return proximal_update(value, t, regularizer.k, exempt, enabled)

    @property
    def variables(self):
        return self._variables + self.inner_optimizer.variables

    @property
    def learning_rate(self):
        return self.inner_optimizer.learning_rate

    @learning_rate.setter
    def learning_rate(self, learning_rate):
        # The base class sets its own (unused) rate while initialising.
        if hasattr(self, "inner_optimizer"):
            self.inner_optimizer.learning_rate = learning_rate
        else:
            keras.optimizers.Optimizer.learning_rate.fset(self, learning_rate)

    @property
    def iterations(self):
        return self.inner_optimizer.iterations

    def __setattr__(self, name, value):
        if name == "loss_scale_factor" and "inner_optimizer" in self.__dict__:
            # A LossScaleOptimizer wrapping this one takes the loss scaling
            # over by setting None: the inner optimizer must not unscale
            # either.
            self.inner_optimizer.loss_scale_factor = value
        super().__setattr__(name, value)

    def scale_loss(self, loss):
        return self.inner_optimizer.scale_loss(loss)

    def finalize_variable_values(self, var_list):
        # With use_ema, the moving averages replace the weights here: the
        # weights training left at exactly 0 stay 0.
        stepped = set(self._proximal) | set(
            map(id, self.unit_plan.variables if self.unit_plan else ()))
        zeros = [(v, ops.equal(v.value, 0)) for v in var_list
                 if id(v) in stepped] if self.inner_optimizer.use_ema else []
        self.inner_optimizer.finalize_variable_values(var_list)
        for variable, zero in zeros:
            value = variable.value
            variable.assign(ops.where(zero, ops.zeros_like(value), value))

    # Beside Keras's "0", "1", ... entries: the variables' paths, as UTF-8
    # bytes joined by newlines (a uint8 array, which every store keeps).
    _PATHS = "keras_lk_paths"

    def save_own_variables(self, store):
        super().save_own_variables(store)
        store[self._PATHS] = np.frombuffer(
            "\n".join(v.path for v in self.variables).encode(), "uint8")

    def load_own_variables(self, store):
        """Loads the saved state, matched by variable path.

        Which weights have a proximal regularizer sets how many variables
        this optimizer has (each keeps SparsityTarget's state). A model
        saved with regularizers its config does not record (attention
        projections, custom layers) loads without them, hence with fewer
        variables, and Keras's loading by position would skip all of them,
        Adam's moments included: here every variable found by its path
        is loaded, and a warning names the rest (the wrapped optimizer's
        own state loads by position where it matches in number and
        shapes). With as many variables as were saved, of the same shapes,
        it loads by position, as Keras does.
        """
        keys = set(store.keys())
        if self._PATHS not in keys:  # saved by an earlier keras_lk
            return super().load_own_variables(store)
        saved = bytes(np.asarray(store[self._PATHS], "uint8")).decode()
        saved = saved.split("\n") if saved else []
        variables = self.variables
        if len(saved) == len(variables) and all(
                tuple(store[str(index)].shape) == tuple(variable.shape)
                for index, variable in enumerate(variables)):
            # By position, as Keras: a fresh model of the same build in the
            # same process (BackupAndRestore) has other generated names.
            for index, variable in enumerate(variables):
                variable.assign(store[str(index)])
            return
        index_of = {path: index for index, path in enumerate(saved)}
        fresh = []
        # The wrapped optimizer's own state (Adam's moments, one per
        # trainable weight) is the same whatever keras_lk keeps: where the
        # saved one matches it in number and shapes, it loads by position
        # (the paths of a model saved mid-fit carry its name, and those of
        # a loaded one do not).
        inner = self.inner_optimizer.variables
        prefix = self.inner_optimizer.name + "/"
        inner_saved = [i for i, path in enumerate(saved)
                       if path.startswith(prefix)]
        if len(inner_saved) == len(inner) and all(
                tuple(store[str(i)].shape) == tuple(v.shape)
                for i, v in zip(inner_saved, inner)):
            for i, variable in zip(inner_saved, inner):
                variable.assign(store[str(i)])
                index_of.pop(saved[i], None)
            done = {id(v) for v in inner}
            variables = [v for v in variables if id(v) not in done]
        for variable in variables:
            index = index_of.pop(variable.path, None)
            value = None if index is None else store[str(index)]
            if value is None or tuple(value.shape) != tuple(variable.shape):
                fresh.append(variable.path)
                continue
            variable.assign(value)
        if fresh or index_of:
            count = len(self.variables)
            warnings.warn(
                f"{self.name}: loaded {count - len(fresh)} of its "
                f"{count} variables by path and shape. Saved but not here "
                f"(the state of weights saved with a proximal regularizer "
                f"the loaded model does not have, e.g. one `attach` warned "
                f"would not be saved: attach it again; or SparsityTarget's "
                f"state in an earlier keras_lk's layout, which starts "
                f"afresh): {sorted(index_of)}. Here but not "
                f"saved (starting fresh): {fresh}.", stacklevel=2)

    def get_config(self):
        return {"name": self.name, "optimizer":
                keras.saving.serialize_keras_object(self.inner_optimizer)}

    @classmethod
    def from_config(cls, config, custom_objects=None):
        config = dict(config)
        optimizer = keras.saving.deserialize_keras_object(
            config.pop("optimizer"), custom_objects=custom_objects)
        return cls(optimizer, **config)
