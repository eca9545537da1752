"""SparsityTarget's state, kept among `ProximalOptimizer`'s variables.

The optimizer owns it (`ProximalOptimizer.sparsity_state`) and creates it
when it is built, so that BackupAndRestore and `.keras` files keep it with
the optimizer's own state. The controller reads and writes it here, by
field name; no other module knows its layout.
"""

import keras
import numpy as np
from keras import ops

from keras_lk import backend


def with_field(vector, field, value):
    """`vector` with `vector[field] = value` (a tensor)."""
    vector = ops.convert_to_tensor(vector)
    index = ops.arange(vector.shape[0])
    return ops.where(ops.equal(index, field),
                     ops.cast(value, vector.dtype), vector)


class WeightState:
    """One covered weight's state: its mask (before the lock its protected
    weights, exempt from the proximal step; from the lock on the weights
    kept), and its group's log strength, threshold (k = 0), unit and
    starting sparsity, repeated in every member of the group."""

    LOG_SCALE, THRESHOLD, UNIT, START = range(4)

    def __init__(self, mask, vector):
        self.mask = mask
        self.vector = vector

    def field(self, index):
        return self.vector[index]

    @property
    def log_scale(self):
        return self.vector[self.LOG_SCALE]

    @property
    def threshold(self):
        return self.vector[self.THRESHOLD]

    @property
    def unit(self):
        return self.vector[self.UNIT]

    def reset(self, log_scale, unit, start, mask):
        """The state at a run's first step (on the host)."""
        self.vector.assign(np.array([log_scale, 0.0, unit, start], "float32"))
        self.mask.assign(mask)


class RunState:
    """The run: `[begin_step, end_step, locked, unfinished, settings]`,
    and the heartbeat (see `SparsityTarget`)."""

    BEGIN, END, LOCKED, UNFINISHED, SETTINGS = range(5)

    def __init__(self, vector, heartbeat):
        self.vector = vector
        self.heartbeat = heartbeat

    @classmethod
    def build(cls, optimizer, prefix):
        """The run's variables among `optimizer`'s, named `<prefix>_run`
        (and `<prefix>_heartbeat` where the step is stateless)."""
        vector = optimizer.add_variable((5,), "zeros", "int64",
                                        name=f"{prefix}_run")
        heartbeat = None
        if backend.current().stateless:
            # The step sees only state it carries, the optimizer's included.
            heartbeat = optimizer.add_variable((), "zeros", "int64",
                                               name=f"{prefix}_heartbeat")
        return cls(vector, heartbeat)

    def engaged(self, iterations, window):
        """Whether the step that brought the count to `iterations` runs in
        the owning callback's fit: within `window` steps (its
        steps_per_execution) of the callback's last batch hook, which set
        the heartbeat."""
        since = (ops.cast(iterations, "int64") - 1
                 - ops.convert_to_tensor(self.heartbeat))
        return ops.logical_and(ops.greater_equal(since, 0),
                               ops.less(since, window))

    @property
    def begin(self):
        return self.vector[self.BEGIN]

    @property
    def end(self):
        return self.vector[self.END]

    @property
    def locked(self):
        return ops.not_equal(self.vector[self.LOCKED], 0)

    def host(self):
        """`(unfinished, settings)` as Python ints."""
        vector = ops.convert_to_numpy(self.vector)
        return int(vector[self.UNFINISHED]), int(vector[self.SETTINGS])

    def reset(self, begin, end, settings):
        self.vector.assign(np.array([begin, end, 0, 1, settings], "int64"))

    def finish(self):
        self.vector.assign(with_field(self.vector, self.UNFINISHED, 0))

    def with_locked(self, locked):
        """The run's vector with `locked` (a bool tensor) set."""
        return with_field(self.vector, self.LOCKED, ops.logical_or(
            self.locked, locked))

    def ensure_heartbeat(self):
        """The heartbeat variable, made on first use where the optimizer
        does not carry one; set to -1 (no owning fit yet)."""
        if self.heartbeat is None:
            self.heartbeat = keras.Variable(np.array(-1, "int64"),
                                            dtype="int64", trainable=False)
        else:
            self.heartbeat.assign(-1)
        return self.heartbeat


class SparsityState:
    """Every covered weight's `WeightState` (by variable id) and the run.

    Create it with `SparsityState.build(optimizer, variables)` in the
    optimizer's `build`.
    """

    def __init__(self, weights, run):
        self.weights = weights
        self.run = run

    @classmethod
    def build(cls, optimizer, variables):
        """Adds the state of `variables` (the weights with a proximal
        regularizer) to `optimizer`'s variables; None if there are none."""
        if not variables:
            return None
        weights = {}
        for variable in variables:
            name = variable.path.replace("/", "_")
            weights[id(variable)] = WeightState(
                optimizer.add_variable(tuple(variable.shape), "ones", "bool",
                                       name=f"{name}_sparsity_mask"),
                optimizer.add_variable((4,), "zeros", "float32",
                                       name=f"{name}_sparsity_state"))
        return cls(weights, RunState.build(optimizer, "sparsity"))

    def __contains__(self, variable):
        return id(variable) in self.weights

    def of(self, variable):
        return self.weights[id(variable)]
