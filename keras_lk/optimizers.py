"""`ProximalOptimizer`: proximal Lk steps after any Keras optimizer's step."""

import math
import warnings

import keras
import numpy as np
import tensorflow as tf
from keras import ops

from keras_lk import _validation
from keras_lk._require_tf import require_backend
from keras_lk.proximal import (half_threshold_newton, hard_threshold, prox,
                               soft_threshold)
from keras_lk.regularizers import (LkRegularizer, mark_proximal_handled,
                                   unwrap)


def _compiled(function):
    return tf.function(lambda y, t: function(y, ops.cast(t, y.dtype)),
                       jit_compile=True, autograph=False)


# The proximal steps that XLA compiles into one fused pass over the weight
# (TensorFlow otherwise runs one kernel, one pass, per elementwise op):
# 2.1M weights, k = 1 in 0.75 ms instead of 1.5; k = 1/2 by Newton's method
# in 2.5 ms instead of 9 (the closed form's arccos is slower under XLA).
# The proximal steps with a fast form: k -> function(y, t).
_FAST_PROX = {0.0: hard_threshold, 1.0: soft_threshold,
              0.5: half_threshold_newton}
_FUSED_PROX = {k: _compiled(function) for k, function in _FAST_PROX.items()}


def _compiled_exempt(function):
    return tf.function(
        lambda y, t, exempt: ops.where(exempt, y,
                                       function(y, ops.cast(t, y.dtype))),
        jit_compile=True, autograph=False)


# The same, leaving the weights where `exempt` is True as they are (what
# SparsityTarget's protection needs), still one pass.
_FUSED_PROX_EXEMPT = {k: _compiled_exempt(function)
                      for k, function in _FAST_PROX.items()}


def _proximal_update(value, t, k, exempt=None):
    if exempt is None:
        fused = _FUSED_PROX.get(k)
        return fused(value, t) if fused is not None else prox(value, t, k)
    fused = _FUSED_PROX_EXEMPT.get(k)
    if fused is not None:
        # A tensor, not the mask variable (a traced argument).
        return fused(value, t, tf.identity(exempt))
    return ops.where(exempt, value, prox(value, t, k))


def _plain_proximal_update(value, t, k):
    """The same steps in plain keras.ops, for backends whose train step is
    compiled as a whole (JAX: jax.jit fuses them with the rest of it) or
    run eagerly (PyTorch: one kernel per operation, where k = 1/2's closed
    form, with fewer operations than Newton's steps, is the faster)."""
    function = _FAST_PROX.get(k)
    if function is None or (k == 0.5 and keras.backend.backend() != "jax"):
        return prox(value, t, k)
    return function(value, ops.cast(t, value.dtype))


def optimizer_chain(optimizer):
    """`optimizer` and every optimizer it wraps (`inner_optimizer`)."""
    while optimizer is not None:
        yield optimizer
        optimizer = getattr(optimizer, "inner_optimizer", None)


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

    Example:

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

    def __init__(self, optimizer, name=None, **kwargs):
        require_backend("keras_lk.ProximalOptimizer")
        if not isinstance(optimizer, keras.optimizers.Optimizer) or isinstance(
                optimizer, ProximalOptimizer):
            raise _validation.invalid(
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
        self._sparsity_slots = {}
        self._sparsity_run = None
        self._controller = None  # set by keras_lk.SparsityTarget

    def _find_proximal(self, var_list):
        """The proximal regularizers the weights carry now: `attach` and
        `detach` after the optimizer was built (after `compile` and a fit,
        or after loading) reset the train step, whose next trace reads
        them here again."""
        self._proximal = {}
        for variable in var_list:
            regularizer = _proximal_regularizer(variable)
            if regularizer is not None:
                self._proximal[id(variable)] = regularizer
                mark_proximal_handled(variable)

    def build(self, var_list):
        self.inner_optimizer.build(var_list)
        self._find_proximal(var_list)
        super().build(var_list)
        # SparsityTarget's state lives here, with the optimizer's own, so
        # that BackupAndRestore and `.keras` files keep it: per proximal
        # weight its mask and [log strength, threshold, unit, start], and
        # the run [begin, end, locked, unfinished, settings].
        self._sparsity_slots = {}
        self._sparsity_run = None
        proximal = [v for v in var_list if id(v) in self._proximal]
        for variable in proximal:
            name = variable.path.replace("/", "_")
            self._sparsity_slots[id(variable)] = (
                self.add_variable(tuple(variable.shape), "ones", "bool",
                                  name=f"{name}_sparsity_mask"),
                self.add_variable((4,), "zeros", "float32",
                                  name=f"{name}_sparsity_state"))
        if proximal:
            self._sparsity_run = self.add_variable(
                (5,), "zeros", "int64", name="sparsity_run")
        self._sparsity_heartbeat = None
        if proximal and keras.backend.backend() != "tensorflow":
            # SparsityTarget's heartbeat (see its controller): on JAX the
            # step sees only state it carries, the optimizer's included.
            self._sparsity_heartbeat = self.add_variable(
                (), "zeros", "int64", name="sparsity_heartbeat")

    def apply(self, grads, trainable_variables=None):
        if not self.built:
            self.build(trainable_variables)
            self.built = True
        else:  # build found them; since, attach/detach may have changed them
            self._find_proximal(trainable_variables
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
        if not variables:
            return
        if keras.backend.backend() == "tensorflow":
            _in_cross_replica_context(self._proximal_step, variables,
                                      learning_rate, updated)
        else:
            self._stateless_proximal_step(variables, learning_rate, updated)

    def _stateless_proximal_step(self, variables, learning_rate, updated):
        """`w <- prox(w, t, k)` where the step is a pure function (JAX).

        Inside `stateless_apply` every read and `assign` goes through the
        stateless scope, so the new values leave the step with the rest of
        the optimizer's. Branches (a step that gradient accumulation does
        not apply, SparsityTarget's controller) are conds that return
        values, assigned after them: a JAX cond cannot assign.
        `keras.distribution` shards the values; the elementwise step needs
        no cross-device work (k = inf reduces over the whole weight, which
        XLA handles across shards).
        """
        def proximal(variable, value, strength=None, exempt=None):
            regularizer = self._proximal[id(variable)]
            t = (regularizer.proximal_strength(
                learning_rate, math.prod(variable.shape))
                if strength is None else strength(learning_rate))
            new = _plain_proximal_update(value, t, regularizer.k)
            return new if exempt is None else ops.where(exempt, value, new)

        iterations = ops.convert_to_tensor(self.inner_optimizer.iterations)

        def step_all():
            if self._controller is None:
                return [proximal(v, v.value) for v in variables]
            return self._controller.step_values(variables, proximal,
                                                iterations)

        before = [v.value for v in variables]
        if not self.inner_optimizer.gradient_accumulation_steps:
            new = step_all()
        else:
            new = ops.cond(updated, step_all, lambda: before)
        for variable, value in zip(variables, new):
            variable.assign(value)
        if self._controller is not None:
            self._controller.after_step_values(
                variables, iterations, updated if
                self.inner_optimizer.gradient_accumulation_steps else None)

    def _proximal_step(self, strategy, variables, learning_rate, updated):
        """`w <- prox(w, t, k)` on every replica's copy, after real updates."""
        controller = self._controller

        def proximal(variable, strength=None, exempt=None):
            regularizer = self._proximal[id(variable)]
            size = math.prod(variable.shape)

            def step(value, learning_rate, *exempt):
                t = (regularizer.proximal_strength(learning_rate, size)
                     if strength is None else strength(learning_rate))
                return value.assign(_proximal_update(
                    value, t, regularizer.k, exempt[0] if exempt else None))

            args = (learning_rate,) if exempt is None else (learning_rate,
                                                            exempt)
            strategy.extended.update(variable.value, step, args=args,
                                     group=False)

        def step_all():
            if controller is None:
                for variable in variables:
                    proximal(variable)
                return
            controller.step(strategy, variables, proximal,
                            ops.convert_to_tensor(
                                self.inner_optimizer.iterations))

        if not self.inner_optimizer.gradient_accumulation_steps:
            step_all()
            return
        # Every replica took the same decision: take the first one's.
        updated = strategy.experimental_local_results(updated)[0]
        ops.cond(updated, step_all, lambda: None)

    def _set_controller(self, controller):
        """Hands the proximal strengths to a `SparsityTarget` (or back)."""
        self._controller = controller

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
        zeros = [(v, ops.equal(v.value, 0)) for v in var_list
                 if id(v) in self._proximal] if self.inner_optimizer.use_ema else []
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
        is loaded, and a warning names the rest. With as many variables as
        were saved, it loads by position, as Keras does.
        """
        keys = set(store.keys())
        if self._PATHS not in keys:  # saved by an earlier keras_lk
            return super().load_own_variables(store)
        saved = bytes(np.asarray(store[self._PATHS], "uint8")).decode()
        saved = saved.split("\n") if saved else []
        variables = self.variables
        if len(saved) == len(variables):
            # By position, as Keras: a fresh model of the same build in the
            # same process (BackupAndRestore) has other generated names.
            for index, variable in enumerate(variables):
                variable.assign(store[str(index)])
            return
        index_of = {path: index for index, path in enumerate(saved)}
        fresh = []
        for variable in variables:
            index = index_of.pop(variable.path, None)
            value = None if index is None else store[str(index)]
            if value is None or tuple(value.shape) != tuple(variable.shape):
                fresh.append(variable.path)
                continue
            variable.assign(value)
        if fresh or index_of:
            warnings.warn(
                f"{self.name}: loaded {len(variables) - len(fresh)} of its "
                f"{len(variables)} variables by path. Saved but not here "
                f"(weights saved with a proximal regularizer the loaded "
                f"model does not have, e.g. one `attach` warned would not be "
                f"saved: attach it again): {sorted(index_of)}. Here but not "
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


def _in_cross_replica_context(fn, *args):
    """Calls `fn(strategy, *args)` where a strategy's updates may run.

    Keras applies gradients in the replica context of `tf.distribute`
    strategies (the default one included); updating every replica's copy of
    a weight needs the cross-replica context, reached with `merge_call`.
    """
    context = tf.distribute.get_replica_context()
    if context is None:
        return fn(tf.distribute.get_strategy(), *args)
    return context.merge_call(fn, args=args)
