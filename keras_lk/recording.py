"""Recording what each compiled step does: the only code that touches a
model's regularizers.

Keras calls every trainable weight's regularizer (`variable.regularizer`) in
each compiled train and test step, with the weight as it enters the step.
That is the one place where keras_lk can see every step on the device, so
while a monitored `fit` runs, each regularized weight's regularizer is
replaced by a `Recorder` that returns the very same value and, on the side,
adds it to an accumulator (and, when asked, ORs the weight's signs into
two masks, for sign flips and stable zeros).

The lifecycle keeps no trace on the model:
- there is one `Recording` per model and one `Recorder` per weight, shared
  by every keras_lk callback, so fresh callbacks never stack wrappers, and
  the step traced with the recorders stays valid from one `fit` to the next
  (no retracing);
- `Recording.install` puts the recorders on at train begin; `restore` puts
  the user's own regularizer objects back at train end and switches the
  recording off;
- if `fit` raises, `on_train_end` never runs: the recorders stay on but are
  inert (same penalty value, one scalar add), and the next monitored `fit`
  restores the user's objects at its end;
- a step traced with the recorders but run after `restore` records nothing:
  the recorders read a control variable that is off, and skip the sign
  masks with a `cond`.

Each callback keeps its own marks on the shared accumulators (they only grow),
so several callbacks with different windows read what they would read alone.
The sign masks are shared too: when one window of steps ends or starts
(`boundary`), every other open window first ORs them into masks of its own,
then they restart; so each step costs two ORs per weight however many
callbacks watch.
"""

import contextlib
import functools
import math
import weakref

import keras
import numpy as np
import tensorflow as tf
from keras import ops

OFF, TRAIN, EVAL = -1, 0, 1

# model id -> (weakref to the model, its Recording)
_RECORDINGS = {}


def _strategy_scope(model):
    strategy = getattr(model, "distribute_strategy", None)
    return strategy.scope() if strategy is not None else contextlib.nullcontext()


def on_tensorflow():
    """Whether Keras runs on TensorFlow (stateful, traced steps)."""
    return keras.backend.backend() == "tensorflow"


class _HostSums:
    """An accumulator on the host, with a variable's `numpy()`: where the
    step is a pure function (JAX), the recorders add to it from the step
    through a host callback; on PyTorch, from the eager step."""

    def __init__(self):
        self.values = np.zeros(2)

    def numpy(self):
        return self.values.copy()


class _HostMask:
    """A sign mask on the host (JAX, PyTorch), with what the code reads of a
    variable: `value` (the array) and `assign`."""

    def __init__(self, array):
        self.array = np.asarray(array, bool)

    @property
    def value(self):
        return self.array

    def assign(self, array):
        self.array = np.array(ops.convert_to_numpy(array), bool)


def wait_for_recorded_steps():
    """On JAX, waits until every dispatched step's host callbacks ran (so
    the accumulators hold every step before they are read). PyTorch's
    steps record as they run."""
    if keras.backend.backend() == "jax":
        import jax
        jax.effects_barrier()


def _new_variable(value, dtype, synchronization="auto"):
    # Updated from every replica's step; one replica's value is the value.
    return keras.Variable(value, dtype=dtype, trainable=False,
                          aggregation="only_first_replica",
                          synchronization=synchronization)


class Recorder:
    """Stands in for one weight's regularizer (same value) while recording.

    Attributes:
        regularizer: The user's regularizer, whose value it returns.
        sums: `[train, eval]` sums of the penalty over recorded steps.
        counts: `[train, eval]` numbers of recorded steps.
        seen_positive, seen_negative: With sign tracking, per element
            whether the weight entered a train step positive (negative)
            since the masks were last reset (`Recording.boundary`); None
            otherwise.
    """

    def __init__(self, regularizer, control):
        self.regularizer = regularizer
        self.control = control
        self.batch = None  # JAX: the Recording's _StepBatch
        if on_tensorflow():
            self.sums = _new_variable(np.zeros(2), "float64")
            self.counts = _new_variable(np.zeros(2), "float64")
        else:  # `control` is the Recording's host state [mode, signs]
            self.sums, self.counts = _HostSums(), _HostSums()
        self.seen_positive = self.seen_negative = None

    def track_signs(self, variable):
        """Adds the sign masks; returns whether they are new."""
        if self.seen_positive is not None:
            return False
        # Each replica updates its own copy (the same weights, the same
        # masks): inside the step's `cond`, a mirrored update would need a
        # cross-replica merge, which a `cond` in a replica cannot hold.
        value = ops.convert_to_numpy(variable)
        if not on_tensorflow():  # ORed on the host, from the step
            self.seen_positive = _HostMask(value > 0)
            self.seen_negative = _HostMask(value < 0)
            return True
        self.seen_positive = _new_variable(value > 0, "bool", "on_read")
        self.seen_negative = _new_variable(value < 0, "bool", "on_read")
        return True

    def __call__(self, x):
        value = self.regularizer(x)
        if not on_tensorflow():
            # JAX's step is a pure function: the value goes to the host,
            # where the mode at that time decides (read as the step runs).
            # PyTorch runs the step eagerly: the host records it at once.
            args = (value,) if self.seen_positive is None else (
                value, ops.convert_to_tensor(x))  # the weight, for its signs
            if keras.backend.backend() == "jax":
                if self.batch is not None:
                    self.batch.add(self, args)
                else:
                    import jax
                    jax.debug.callback(self._record_on_host, *args)
            else:
                self._record_on_host(*(ops.convert_to_numpy(a)
                                       for a in args))
            return value
        mode, signs = self.control[0], self.control[1]
        # OFF gives a zero one-hot: the adds cost nothing and change nothing.
        one_hot = ops.one_hot(mode, 2, dtype="float64")
        self.sums.assign_add(one_hot * ops.cast(value, "float64"))
        self.counts.assign_add(one_hot)
        if self.seen_positive is not None:
            ops.cond(ops.logical_and(ops.equal(mode, TRAIN),
                                     ops.equal(signs, 1)),
                     lambda: self._see_signs(x), lambda: None)
        return value

    def _record_on_host(self, value, x=None):
        mode, signs = self.control[0], self.control[1]
        if mode == OFF:
            return
        self.sums.values[mode] += float(value)
        self.counts.values[mode] += 1.0
        if x is not None and mode == TRAIN and signs == 1:
            x = np.asarray(x)
            self.seen_positive.array |= x > 0
            self.seen_negative.array |= x < 0

    def _see_signs(self, x):
        self.seen_positive.assign(
            ops.logical_or(self.seen_positive, ops.greater(x, 0)))
        self.seen_negative.assign(
            ops.logical_or(self.seen_negative, ops.less(x, 0)))


class _StepBatch:
    """JAX: one host callback per step for every recorder, not one each.

    A host callback costs about 0.35 ms on the CPU, and a model has
    hundreds of regularized weights. Keras calls the regularizers of a
    model's trainable weights in one loop, in `model.trainable_weights`
    order, whenever the step collects `model.losses` (train and test
    steps alike). Each recorder adds its values here; the last one of that
    order sends them all to the host in one callback.

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
        import jax
        index = self._index.get(id(recorder))
        if index is None:
            jax.debug.callback(recorder._record_on_host, *args)
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
        # Two arrays, not one per value: the callback's cost grows with
        # the number of arrays it takes (measured on 40 weights: 9.3 ms a
        # step with one array per weight, against 2.4 ms without it).
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
        jax.debug.callback(functools.partial(_record_all, recorders),
                           penalties, weights)


def _record_all(recorders, penalties, weights):
    """The host side of a `_StepBatch` callback: each recorder's penalty,
    and the signs (-1, 0, 1) of the weights of those that track signs,
    flattened one after another."""
    weights = np.asarray(weights)
    start = 0
    for (recorder, shape), penalty in zip(recorders, np.asarray(penalties)):
        if shape is None:
            recorder._record_on_host(penalty)
            continue
        size = math.prod(shape)
        recorder._record_on_host(
            penalty, weights[start:start + size].reshape(shape))
        start += size


class SignWindow:
    """One window's signs, for stable zeros and sign flips.

    The recorders OR each step's signs into one shared pair of masks per
    weight. A window's view is what it folded in at other windows'
    boundaries (`positive`, `negative`: per weight, or None) plus the
    shared masks now.
    """

    def __init__(self):
        self.positive = None
        self.negative = None


# Two graphs of a fixed structure per model (one per weight list), so that
# windows coming and going never retrace (on JAX the masks are on the host,
# and these run as plain functions).
def _or_masks(shared, fold):
    """`fold | shared` per weight and sign (`shared` alone if `fold` is None).

    Always new tensors: an eager read of a variable shares its buffer, which
    `_reset_signs` then overwrites.
    """
    fold = fold or [(False, False)] * len(shared)
    return [(ops.logical_or(positive, fold_positive),
             ops.logical_or(negative, fold_negative))
            for (positive, negative), (fold_positive, fold_negative)
            in zip(shared, fold)]


def _reset_signs(variables, shared):
    """Restarts the shared masks from the signs of the weights now."""
    for variable, (positive, negative) in zip(variables, shared):
        positive.assign(ops.greater(variable, 0))
        negative.assign(ops.less(variable, 0))


_COMPILED_MASKS = {}


def _masks_function(function):
    """`function` as a tf.function on TensorFlow, as is elsewhere."""
    if not on_tensorflow():
        return function
    if function not in _COMPILED_MASKS:
        _COMPILED_MASKS[function] = tf.function(function, autograph=False)
    return _COMPILED_MASKS[function]


def user_regularizer(regularizer):
    """The user's regularizer behind a `Recorder`, or `regularizer` itself."""
    return regularizer.regularizer if isinstance(regularizer, Recorder) else (
        regularizer)


class Recording:
    """The recorders of one model's regularized weights, and their control.

    Get it with `Recording.of(model)`: there is one per model.
    """

    def __init__(self, model):
        self._model = weakref.ref(model)
        self._recorders = {}   # variable id -> (weakref, Recorder)
        self._control = None   # int32 [mode, sign tracking on]
        self._state = [OFF, 0]  # its value, kept on the host
        self._traced = (None, None)  # weakrefs: functions traced with us
        self._windows = []  # weakrefs to the open SignWindows
        self._batch = None  # JAX: one host callback per step

    @classmethod
    def of(cls, model):
        entry = _RECORDINGS.get(id(model))
        if entry is not None and entry[0]() is model:
            return entry[1]
        recording = cls(model)
        _RECORDINGS[id(model)] = (weakref.ref(model), recording)
        weakref.finalize(model, _RECORDINGS.pop, id(model), None)
        return recording

    def install(self, track_signs=False):
        """Puts the recorders on every regularized weight; recording on.

        Args:
            track_signs: Whether the steps must also track signs.
        """
        model = self._model()
        changed = False
        with _strategy_scope(model):
            if self._control is None:
                # On JAX the host state itself (the step calls back to it).
                self._control = (
                    _new_variable(np.array([OFF, 0]), "int32")
                    if on_tensorflow() else self._state)
            for variable in _regularized_weights(model):
                current = variable.regularizer
                recorder = self.recorder(variable)
                if recorder is None:
                    recorder = Recorder(user_regularizer(current),
                                        self._control)
                    self._recorders[id(variable)] = (weakref.ref(variable),
                                                     recorder)
                    changed = True
                elif user_regularizer(current) is not recorder.regularizer:
                    # The user set another regularizer since: the traced
                    # steps call the old one.
                    recorder.regularizer = user_regularizer(current)
                    changed = True
                if track_signs:
                    changed = recorder.track_signs(variable) or changed
                variable.regularizer = recorder
        if keras.backend.backend() == "jax":
            self._batch_host_calls(model)
        self._retrace_unless_valid(model, changed)
        # Within one fit every callback installs: sign tracking only turns on.
        signs = int(track_signs or (self._state[0] != OFF and self._state[1]))
        self._set([TRAIN, signs])

    def _batch_host_calls(self, model):
        """Lets the recorders of the trainable weights share one host
        callback per step (`_StepBatch`), in the order Keras calls them.
        Traced steps keep the order they were traced with."""
        ours = {id(r) for _, r in self._recorders.values()}
        order = [v.regularizer for v in model.trainable_weights
                 if id(v.regularizer) in ours]
        if self._batch is None:
            self._batch = _StepBatch()
        if len({id(r) for r in order}) != len(order):
            # A recorder twice in the order (a weight listed twice): each
            # calls the host on its own, as no run could complete.
            self._batch.set_order([])
        else:
            self._batch.set_order(order)
        for _, recorder in self._recorders.values():
            recorder.batch = self._batch

    def _set(self, state):
        if not on_tensorflow():
            # The steps dispatched so far record under the mode they ran
            # with; then the mode changes in place (the recorders hold it).
            wait_for_recorded_steps()
            self._state[:] = list(state)
            return
        self._state = list(state)
        self._control.assign(self._state)

    def _retrace_unless_valid(self, model, changed):
        """Makes sure the compiled steps call the recorders.

        A train or test function traced with these very recorders (in an
        earlier monitored fit) stays valid; any other may have been traced
        without them, or with the user's objects, and is made anew (it is
        traced at its first call).
        """
        seen = [ref() if ref is not None else None for ref in self._traced]
        functions = (model.train_function, model.test_function)
        if changed or functions[0] is not seen[0] and functions[0] is not None:
            model.make_train_function(force=True)
        if changed or functions[1] is not seen[1] and functions[1] is not None:
            model.make_test_function(force=True)
        self._remember_functions(model)

    def _remember_functions(self, model):
        self._traced = tuple(
            weakref.ref(f) if f is not None else None
            for f in (model.train_function, model.test_function))

    def restore(self):
        """Puts the user's regularizers back; recording off."""
        model = self._model()
        if self._control is None or model is None:
            return
        for reference, recorder in self._recorders.values():
            variable = reference()
            if variable is not None and variable.regularizer is recorder:
                variable.regularizer = recorder.regularizer
        self._set([OFF, 0])
        self._remember_functions(model)

    def set_mode(self, mode):
        """Records the next steps as training (TRAIN) or evaluation (EVAL)."""
        if self._state[0] not in (OFF, mode):
            self._set([mode, self._state[1]])

    def boundary(self, window, tracked):
        """`window` starts anew: the other windows keep what the shared
        sign masks saw so far, and the masks restart from the signs now.

        Args:
            window: The `SignWindow` that starts.
            tracked: `(variable, recorder)` of the weights whose signs are
                tracked, in the order of the windows' per-weight masks.
        """
        live = [w for w in (ref() for ref in self._windows) if w is not None]
        others = [w for w in live if w is not window]
        self._windows = [weakref.ref(w) for w in others + [window]]
        window.positive = window.negative = None
        if not tracked:
            return
        wait_for_recorded_steps()
        masks = [(r.seen_positive, r.seen_negative) for _, r in tracked]
        # TensorFlow: its variables, arguments of the traced functions; on
        # JAX and PyTorch the host masks' arrays.
        shared = [(positive.value, negative.value) for positive, negative
                  in masks]
        for other in others:
            folded = _masks_function(_or_masks)(
                shared, None if other.positive is None else
                list(zip(other.positive, other.negative)))
            other.positive = [p for p, _ in folded]
            other.negative = [n for _, n in folded]
        _masks_function(_reset_signs)([v.value for v, _ in tracked],
                                      shared if on_tensorflow() else masks)

    def recorder(self, variable):
        """The `Recorder` of `variable`, or None."""
        entry = self._recorders.get(id(variable))
        if entry is not None and entry[0]() is variable:
            return entry[1]
        return None


def _regularized_weights(model):
    """Every weight of `model` with a regularizer, each once."""
    seen = set()
    for variable in model.weights:
        if id(variable) in seen or getattr(variable, "regularizer",
                                           None) is None:
            continue
        seen.add(id(variable))
        yield variable
