"""Where the recorders accumulate: device variables, or the host.

`Recording` picks one sink when it is created (see `backend.current()`):
- `DeviceSink` (TensorFlow): the accumulators and sign masks are
  variables, updated inside the traced step;
- `HostSink` (JAX, PyTorch): they are NumPy arrays on the host, which the
  step reaches through a host call (on JAX batched: one callback per step
  for every recorder, `StepBatch`); PyTorch's eager step records at once.
"""

import functools
import math

import keras
import numpy as np
from keras import ops

from keras_lk.core import backend

OFF, TRAIN, EVAL = -1, 0, 1


def _new_variable(value, dtype, synchronization="auto"):
    # Updated from every replica's step; one replica's value is the value.
    return keras.Variable(value, dtype=dtype, trainable=False,
                          aggregation="only_first_replica",
                          synchronization=synchronization)


class DeviceSink:
    """Accumulators in device variables, added to inside the step."""

    def control(self, state):
        """The recording's control, `[mode, sign tracking on]` (int32)."""
        return _new_variable(np.array(state), "int32")

    def accumulator(self):
        return _new_variable(np.zeros(2), "float64")

    def mask(self, array):
        # Each replica updates its own copy (the same weights, the same
        # masks): inside the step's `cond`, a mirrored update would need a
        # cross-replica merge, which a `cond` in a replica cannot hold.
        return _new_variable(array, "bool", "on_read")

    def set_state(self, control, state):
        control.assign(list(state))

    def masks_function(self, function):
        """`function` over the sign masks, traced once per weight list."""
        return backend.current().compile_pass(function)

    def writable(self, mask):
        """What a masks function assigns to: the variable itself, an
        argument of the traced function."""
        return mask.value

    def record(self, recorder, value, x):
        mode, signs = recorder.control[0], recorder.control[1]
        # OFF gives a zero one-hot: the adds cost nothing and change nothing.
        one_hot = ops.one_hot(mode, 2, dtype="float64")
        recorder.sums.assign_add(one_hot * ops.cast(value, "float64"))
        recorder.counts.assign_add(one_hot)
        if recorder.seen_positive is not None:
            ops.cond(ops.logical_and(ops.equal(mode, TRAIN),
                                     ops.equal(signs, 1)),
                     lambda: _see_signs(recorder, x), lambda: None)


def _see_signs(recorder, x):
    recorder.seen_positive.assign(
        ops.logical_or(recorder.seen_positive, ops.greater(x, 0)))
    recorder.seen_negative.assign(
        ops.logical_or(recorder.seen_negative, ops.less(x, 0)))


class HostSums:
    """An accumulator on the host, with a variable's `numpy()`."""

    def __init__(self):
        self.values = np.zeros(2)

    def numpy(self):
        return self.values.copy()


class HostMask:
    """A sign mask on the host, with what the code reads of a variable:
    `value` (the array) and `assign`."""

    def __init__(self, array):
        self.array = np.asarray(array, bool)

    @property
    def value(self):
        return self.array

    def assign(self, array):
        self.array = np.array(ops.convert_to_numpy(array), bool)


class HostSink:
    """Accumulators on the host; the step calls back to it."""

    def control(self, state):
        # The host state itself: the step's host calls read it as they run.
        return state

    def accumulator(self):
        return HostSums()

    def mask(self, array):
        return HostMask(array)

    def set_state(self, control, state):
        # The steps dispatched so far record under the mode they ran with;
        # then the mode changes in place (the recorders hold it).
        backend.current().wait()
        control[:] = list(state)

    def masks_function(self, function):
        return function

    def writable(self, mask):
        return mask

    def record(self, recorder, value, x):
        # The value goes to the host, where the mode at that time decides.
        args = (value,) if recorder.seen_positive is None else (
            value, ops.convert_to_tensor(x))  # the weight, for its signs
        if recorder.batch is not None:
            recorder.batch.add(recorder, args)
        else:
            backend.current().host_call(recorder.record_on_host, *args)


def sink():
    """The sink of the backend Keras runs on."""
    return DeviceSink() if backend.current().records_on_device else HostSink()


class StepBatch:
    """One host call per step for every recorder, not one each.

    A host callback from a compiled step costs far more than the values it
    carries, and a model has hundreds of regularized weights. Keras calls
    the regularizers of a model's trainable weights in one loop, in
    `model.trainable_weights` order, whenever the step collects
    `model.losses` (train and test steps alike). Each recorder adds its
    values here; the last one of that order sends them all to the host in
    one call.

    Only a complete run of that order is a step. A partial one (a
    sublayer's `losses` read on its own, outside the step) is not
    recorded, and never mixes with a step's values: a run that breaks
    the order is dropped. A recorder outside the order (a regularized
    weight that is not trainable, whose regularizer Keras does not call
    in the step) calls the host on its own.
    """

    def __init__(self):
        self._index = {}
        self._pending = []

    def set_order(self, recorders):
        """The recorders in the order the step calls them."""
        self._index = {id(r): i for i, r in enumerate(recorders)}
        self._pending = []

    def add(self, recorder, args):
        host_call = backend.current().host_call
        index = self._index.get(id(recorder))
        if index is None:
            host_call(recorder.record_on_host, *args)
            return
        if index == 0:
            self._pending = []
        if index != len(self._pending):  # not a step's complete run
            self._pending = []
            return
        self._pending.append((recorder, len(args), args))
        if len(self._pending) < len(self._index):
            return
        pending, self._pending = self._pending, []
        # Two arrays, not one per value: the call's cost grows with the
        # number of arrays it takes.
        penalties = ops.stack([ops.cast(args[0], "float32")
                               for _, _, args in pending])
        signed = [(r, args[1]) for r, arity, args in pending if arity == 2]
        # Only the signs matter: int8 is exact for any dtype, and a quarter
        # of float32's transfer.
        weights = (ops.concatenate([ops.cast(ops.sign(ops.reshape(w, (-1,))),
                                             "int8") for _, w in signed])
                   if signed else ops.zeros((0,), "int8"))
        shapes = {id(r): tuple(w.shape) for r, w in signed}
        recorders = [(r, shapes.get(id(r))) for r, _, _ in pending]
        host_call(functools.partial(_record_all, recorders), penalties,
                  weights)


def _record_all(recorders, penalties, weights):
    """The host side of a `StepBatch` call: each recorder's penalty, and
    the signs (-1, 0, 1) of the weights of those that track signs,
    flattened one after another."""
    weights = np.asarray(weights)
    start = 0
    for (recorder, shape), penalty in zip(recorders, np.asarray(penalties)):
        if shape is None:
            recorder.record_on_host(penalty)
            continue
        size = math.prod(shape)
        recorder.record_on_host(
            penalty, weights[start:start + size].reshape(shape))
        start += size
