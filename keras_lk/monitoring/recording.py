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
import weakref

import numpy as np

from keras import ops

from keras_lk.core import backend

from keras_lk.monitoring import sinks
from keras_lk.monitoring.sinks import OFF, TRAIN
from keras_lk.core.chain import RegularizerWrapper, unwrap

# model id -> (weakref to the model, its Recording). A registry, because
# several monitors on one model in one fit share one recorder per weight
# (a weight's regularizer can be wrapped once): it exists so that each
# callback finds the model's recording here; entries go with their models
# (tests/test_no_trace.py, the fits with two monitors at once).
_RECORDINGS = {}


def _strategy_scope(model):
    strategy = getattr(model, "distribute_strategy", None)
    return strategy.scope() if strategy is not None else contextlib.nullcontext()


class Recorder(RegularizerWrapper):
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

    def __init__(self, regularizer, control, sink):
        self.regularizer = regularizer
        self.control = control
        self.sink = sink
        self.batch = None  # the Recording's StepBatch, where it batches
        self.sums, self.counts = sink.accumulator(), sink.accumulator()
        self.seen_positive = self.seen_negative = None

    def track_signs(self, variable):
        """Adds the sign masks; returns whether they are new."""
        if self.seen_positive is not None:
            return False
        value = ops.convert_to_numpy(variable)
        self.seen_positive = self.sink.mask(value > 0)
        self.seen_negative = self.sink.mask(value < 0)
        return True

    def __call__(self, x):
        value = self.regularizer(x)
        self.sink.record(self, value, x)
        return value

    def record_on_host(self, value, x=None):
        """A step's penalty (and weight, for its signs), on the host."""
        mode, signs = self.control[0], self.control[1]
        if mode == OFF:
            return
        self.sums.values[mode] += float(value)
        self.counts.values[mode] += 1.0
        if x is not None and mode == TRAIN and signs == 1:
            x = np.asarray(x)
            self.seen_positive.array |= x > 0
            self.seen_negative.array |= x < 0


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


class Recording:
    """The recorders of one model's regularized weights, and their control.

    Get it with `Recording.of(model)`: there is one per model.
    """

    def __init__(self, model):
        self._model = weakref.ref(model)
        self._recorders = {}   # variable id -> (weakref, Recorder)
        self._sink = sinks.sink()  # device or host, for this backend
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
                self._control = self._sink.control(self._state)
            for variable in _regularized_weights(model):
                current = variable.regularizer
                recorder = self.recorder(variable)
                if recorder is None:
                    recorder = Recorder(unwrap(current), self._control,
                                        self._sink)
                    self._recorders[id(variable)] = (weakref.ref(variable),
                                                     recorder)
                    changed = True
                elif unwrap(current) is not recorder.regularizer:
                    # The user set another regularizer since: the traced
                    # steps call the old one.
                    recorder.regularizer = unwrap(current)
                    changed = True
                if track_signs:
                    changed = recorder.track_signs(variable) or changed
                variable.regularizer = recorder
        if backend.current().batches_host_calls:
            self._batch_host_calls(model)
        self._retrace_unless_valid(model, changed)
        # Within one fit every callback installs: sign tracking only turns on.
        signs = int(track_signs or (self._state[0] != OFF and self._state[1]))
        self._set([TRAIN, signs])

    def _batch_host_calls(self, model):
        """Lets the recorders of the trainable weights share one host
        callback per step (`sinks.StepBatch`), in the order Keras calls them.
        Traced steps keep the order they were traced with."""
        ours = {id(r) for _, r in self._recorders.values()}
        order = [v.regularizer for v in model.trainable_weights
                 if id(v.regularizer) in ours]
        if self._batch is None:
            self._batch = sinks.StepBatch()
        if len({id(r) for r in order}) != len(order):
            # A recorder twice in the order (a weight listed twice): each
            # calls the host on its own, as no run could complete.
            self._batch.set_order([])
        else:
            self._batch.set_order(order)
        for _, recorder in self._recorders.values():
            recorder.batch = self._batch

    def _set(self, state):
        self._sink.set_state(self._control, state)
        self._state[:] = list(state)

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
        backend.current().wait()
        masks = [(r.seen_positive, r.seen_negative) for _, r in tracked]
        shared = [(positive.value, negative.value) for positive, negative
                  in masks]
        for other in others:
            folded = self._sink.masks_function(_or_masks)(
                shared, None if other.positive is None else
                list(zip(other.positive, other.negative)))
            other.positive = [p for p, _ in folded]
            other.negative = [n for _, n in folded]
        self._sink.masks_function(_reset_signs)(
            [v.value for v, _ in tracked],
            [tuple(self._sink.writable(m) for m in pair) for pair in masks])

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
