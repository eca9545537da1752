"""The backend seam: the one module that knows which backend Keras runs on.

Every other module asks `current()` and reads as if there were one backend.
A `Backend` answers how to compile and fuse a function, call the host from
a step, wait for dispatched steps, take a gradient, update variables
(every replica's copy, or as values a pure step returns), and which of the
equivalent formulations is the faster one where it runs.

- TensorFlow traces stateful steps: conds assign inside their branches,
  elementwise work is XLA-fused on its own, the recorders' accumulators
  are device variables, and updates run in the cross-replica context of
  `tf.distribute` strategies.
- JAX compiles the whole train step as a pure function (`jax.jit`): every
  branch is a cond that returns values, assigned after it; the host is
  reached by `jax.debug.callback`.
- PyTorch runs the step eagerly: the host is right there, nothing is
  traced, and compiling adds nothing.
"""

import functools

import keras
import numpy as np
from keras import ops

TRAINING_BACKENDS = ("tensorflow", "jax", "torch")
EVERY_BACKEND = (
    "LkRegularizer (as a gradient penalty), prox, attach, detach, sparsity "
    "and strip")
_NAMES = {"tensorflow": "TensorFlow", "jax": "JAX", "torch": "PyTorch"}


def backend_names(backends):
    """`("tensorflow", "jax", "torch")` -> "TensorFlow, JAX or PyTorch"."""
    names = [_NAMES.get(b, b) for b in backends]
    return " or ".join(names) if len(names) < 3 else (
        ", ".join(names[:-1]) + " or " + names[-1])


def require_training(what, backends=TRAINING_BACKENDS):
    """Raises NotImplementedError naming the backend if Keras does not run
    on one of `backends`: `what` needs their training steps (the monitors'
    recorders, the proximal step and SparsityTarget's controller run
    inside them)."""
    backend = keras.backend.backend()
    if backend in backends:
        return
    raise NotImplementedError(
        f"{what} needs the {backend_names(backends)} backend; this Keras "
        f"runs on {backend!r} (KERAS_BACKEND={backend}). On {backend}, "
        f"{EVERY_BACKEND} work; set KERAS_BACKEND=tensorflow (or jax, or "
        f"torch) for the rest.")


class Backend:
    """What differs between backends; the defaults are a plain eager one
    (Keras's numpy backend, where only the pure math runs).

    Attributes:
        name: `keras.backend.backend()`.
        stateless: Whether the train step is a pure function whose state
            the optimizer carries (JAX): state a step writes must be among
            the optimizer's variables.
        records_on_device: Whether the recorders accumulate in device
            variables (else on the host, through `host_call`).
        batches_host_calls: Whether one host call per step for all
            recorders beats one each (a callback from a compiled step costs
            far more than the values it carries).
        packs_weights: Whether the statistics pass packs many weights into
            one array: it pays where the pass is compiled (one trace
            however many weights), not where it runs eagerly.
        eager: Whether steps run op by op, where fewer operations beat
            fewer passes over memory.
        count_dtype: The integer dtype of counts over weights.
    """

    name = "numpy"
    stateless = False
    records_on_device = False
    batches_host_calls = False
    packs_weights = False
    eager = True
    count_dtype = "int32"

    def __init__(self):
        self._cache = {}

    # Compiling.
    def cached(self, key, build):
        """The one compile cache: `build()` once per explicit `key`."""
        if key not in self._cache:
            self._cache[key] = build()
        return self._cache[key]

    def fuse(self, function, key=None):
        """`function` compiled into one fused pass over its arrays, where
        the backend would otherwise run one kernel per operation and the
        caller is not already compiled as a whole. The identity here."""
        return function

    def compile_pass(self, function, static_argnames=()):
        """`function` (a reduction over weights, run outside any step)
        compiled by the backend, once per set of shapes; gradients off."""
        return function

    # The host.
    def host_call(self, function, *args):
        """Calls `function` with `args` as NumPy arrays, from inside a
        step, as the step runs."""
        function(*(ops.convert_to_numpy(a) for a in args))

    def wait(self):
        """Waits until every dispatched step's host calls ran."""

    # Gradients.
    def gradient(self, function, value, *args):
        """d function(value, *args) / d value, zeros where it does not
        depend on `value`."""
        raise NotImplementedError(f"gradients on {self.name}")

    def model_gradients(self, model, loss, x, y, variables):
        """d mean(loss(y, model(x))) / d variable for each of `variables`
        (None where a weight is not trainable)."""
        raise NotImplementedError(f"gradients on {self.name}")

    def no_gradient(self, x):
        """The gradient that says `x` gets none (a custom gradient's)."""
        return ops.zeros_like(x)

    def abs(self, x):
        """`|x|` whose derivative at 0 is the subgradient 0."""
        # Autodiff of abs gives 1 at 0 on JAX; x * sign(x) = |x| exactly,
        # and its derivative is sign(x).
        return ops.multiply(x, ops.stop_gradient(ops.sign(x)))

    # Updating state.
    def in_update_context(self, function, *args):
        """Calls `function(*args)` where variables may be updated on every
        replica."""
        return function(*args)

    def assign(self, variables, values, condition=None):
        """Sets each of `variables` to its value in `values()` (a list, in
        order), or, with a scalar bool `condition`, only when it holds
        (`values` is then computed only where it does, if the backend
        can). Call it in `in_update_context`."""
        if condition is None:
            new = values()
        else:
            new = ops.cond(condition, values,
                           lambda: [v.value for v in variables])
        for variable, value in zip(variables, new):
            variable.assign(value)

    def select(self, condition, true_values, false_values):
        """`true_values()` where the scalar `condition` holds, else
        `false_values()` (lists of arrays of the same shapes)."""
        new, old = true_values(), false_values()
        return [ops.where(condition, a, b) for a, b in zip(new, old)]

    def detached(self, value):
        """`value` as a new array that another variable may take."""
        return np.array(ops.convert_to_numpy(value))

    def count_indices(self, index, width):
        """How often each of `0 .. width - 1` occurs in the int32 `index`
        (larger values are not counted): `width` int32 counts."""
        return ops.bincount(index, minlength=width)[:width]


class _TensorFlow(Backend):
    name = "tensorflow"
    records_on_device = True
    packs_weights = True
    eager = False
    count_dtype = "int64"

    def fuse(self, function, key=None):
        import tensorflow as tf
        if key is None:
            key = (getattr(function, "func", function), tuple(sorted(
                getattr(function, "keywords", {}).items())))
        return self.cached(("fuse",) + tuple(key), lambda: tf.function(
            function, jit_compile=True, autograph=False))

    def compile_pass(self, function, static_argnames=()):
        import tensorflow as tf
        return self.cached(("pass", function), lambda: tf.function(
            function, autograph=False))

    def host_call(self, function, *args):
        raise NotImplementedError("TensorFlow records on the device")

    def gradient(self, function, value, *args):
        import tensorflow as tf
        with tf.GradientTape() as tape:
            tape.watch(value)
            result = function(value, *args)
        return tape.gradient(
            result, value, unconnected_gradients=tf.UnconnectedGradients.ZERO)

    def model_gradients(self, model, loss, x, y, variables):
        import tensorflow as tf
        with tf.GradientTape() as tape:
            data_loss = ops.mean(loss(y, model(x, training=False)))
        return tape.gradient(data_loss, variables)

    def no_gradient(self, x):
        return None

    def abs(self, x):
        return ops.abs(x)

    def in_update_context(self, function, *args):
        # Keras applies gradients in the replica context of tf.distribute
        # strategies (the default one included); updating every replica's
        # copy of a variable needs the cross-replica context.
        import tensorflow as tf
        context = tf.distribute.get_replica_context()
        if context is None:
            return function(*args)

        def merged(strategy, *args):
            # Every replica took the same values: take the first one's.
            return function(*(strategy.experimental_local_results(a)[0]
                              for a in args))

        return context.merge_call(merged, args=args)

    def assign(self, variables, values, condition=None):
        def update():
            for variable, value in zip(variables, values()):
                variable.assign(value)

        if condition is None:
            update()
        else:
            # A cond that assigns: nothing is copied where it does not hold.
            ops.cond(condition, update, lambda: None)

    def select(self, condition, true_values, false_values):
        return ops.cond(condition, true_values, false_values)

    def detached(self, value):
        return value

    def count_indices(self, index, width):
        # Without the max over `index` that `tf.math.bincount` (and so
        # `ops.bincount`) takes to size its output: the counts are the same.
        import tensorflow as tf
        return tf.raw_ops.DenseBincount(
            input=index, size=width, weights=tf.zeros([0], index.dtype),
            binary_output=False)


class _Jax(Backend):
    name = "jax"
    stateless = True
    batches_host_calls = True
    packs_weights = True
    eager = False

    def compile_pass(self, function, static_argnames=()):
        import jax
        return self.cached(("pass", function), lambda: jax.jit(
            function, static_argnames=static_argnames))

    def host_call(self, function, *args):
        import jax
        jax.debug.callback(function, *args)

    def wait(self):
        import jax
        jax.effects_barrier()

    def gradient(self, function, value, *args):
        import jax
        return jax.grad(function)(value, *args)

    def model_gradients(self, model, loss, x, y, variables):
        import jax
        trainable = model.trainable_variables
        non_trainable = [v.value for v in model.non_trainable_variables]

        def data_loss(values):
            outputs, _ = model.stateless_call(values, non_trainable, x,
                                              training=False)
            return ops.mean(loss(y, outputs))

        grads = jax.grad(data_loss)([v.value for v in trainable])
        index = {id(v): i for i, v in enumerate(trainable)}
        return [grads[index[id(v)]] if id(v) in index else None
                for v in variables]

    def count_indices(self, index, width):
        # JAX's bincount needs its length known when traced: a segment sum
        # of ones gives the same counts.
        return ops.segment_sum(ops.ones_like(index), index, width)


class _Torch(Backend):
    name = "torch"

    def compile_pass(self, function, static_argnames=()):
        # Eager, outside autograd: the weights are parameters that require
        # gradients, and a measure needs none.
        @functools.wraps(function)
        def without_gradients(*args, **kwargs):
            import torch
            with torch.no_grad():
                return function(*args, **kwargs)

        return without_gradients

    def gradient(self, function, value, *args):
        import torch
        value = value.detach().clone().requires_grad_(True)
        with torch.enable_grad():
            result = function(value, *args)
            grad = (torch.autograd.grad(result, value, allow_unused=True)[0]
                    if result.requires_grad else None)
        return torch.zeros_like(value) if grad is None else grad

    def model_gradients(self, model, loss, x, y, variables):
        import torch
        trainable = [v for v in variables if v.trainable]
        with torch.enable_grad():
            data_loss = ops.mean(loss(y, model(x, training=False)))
            grads = torch.autograd.grad(
                data_loss, [v.value for v in trainable], allow_unused=True)
        found = {id(v): g for v, g in zip(trainable, grads)}
        return [found.get(id(v)) for v in variables]


_BACKENDS = {"tensorflow": _TensorFlow, "jax": _Jax, "torch": _Torch}
# One `Backend` per backend name, made on first use. The cache exists
# because each holds the compile cache of its fused functions, which must
# outlive any one call.
_CURRENT = {}


def current():
    """The `Backend` of the backend Keras runs on (one object per backend,
    holding its compile cache)."""
    name = keras.backend.backend()
    if name not in _CURRENT:
        backend = _BACKENDS.get(name, Backend)()
        backend.name = name
        _CURRENT[name] = backend
    return _CURRENT[name]
