"""SparsityTarget's state, kept among `ProximalOptimizer`'s variables.

It is made when the optimizer is built (`SparsityState.build`, registered
with `ProximalOptimizer.keep_state`), so that BackupAndRestore and
`.keras` files keep it with the optimizer's own state. One layout serves
weights and units: every steered member (a covered weight, or a unit
group) has an `Entry`, a float32 vector of the named `FIELDS` and a bool
mask; the run has a `RunState`. No other module knows the layout.
"""

import keras
import numpy as np
from keras import ops

from keras_lk.core import backend
from keras_lk.penalties.optimizer import ProximalOptimizer

# An entry's fields:
# - log_scale: log of the group's strength (k > 0);
# - threshold: the group's threshold on the magnitudes (k = 0);
# - scale: the scale `u` a weight's magnitude is measured in, |w| / u
#   (allocation "normalized"; 1 otherwise; unused by units);
# - start: the group's fraction of zeros at the run's start;
# - target: the fraction of zeros at `end_step` (units);
# - keep: how many units stay at the lock (units).
# A weight's entry repeats its group's values.
FIELDS = ("log_scale", "threshold", "scale", "start", "target", "keep")
_INDEX = {name: index for index, name in enumerate(FIELDS)}


def with_field(vector, field, value):
    """`vector` with position `field` set to `value` (a tensor)."""
    vector = ops.convert_to_tensor(vector)
    index = ops.arange(vector.shape[0])
    return ops.where(ops.equal(index, field),
                     ops.cast(value, vector.dtype), vector)


class Entry:
    """One steered member's state: `vector` (the `FIELDS`) and `mask`.

    The mask of a weight: before the lock its protected elements (exempt
    from the proximal step), from the lock on the elements kept. Of a unit
    group: the units kept at the lock.
    """

    def __init__(self, vector, mask):
        self.vector = vector
        self.mask = mask

    def get(self, name):
        """The field `name` now, a scalar tensor."""
        return self.vector[_INDEX[name]]

    log_scale = property(lambda self: self.get("log_scale"))
    threshold = property(lambda self: self.get("threshold"))
    scale = property(lambda self: self.get("scale"))
    start = property(lambda self: self.get("start"))
    target = property(lambda self: self.get("target"))
    keep = property(lambda self: self.get("keep"))

    def changed(self, vector=None, **values):
        """The vector (or `vector`) with the fields named set (tensors)."""
        vector = self.vector.value if vector is None else vector
        for name, value in values.items():
            vector = with_field(vector, _INDEX[name], value)
        return vector

    def reset(self, mask, **values):
        """The state at a run's first step (on the host): the fields named,
        0 for the others."""
        unknown = set(values) - set(FIELDS)
        if unknown:
            raise ValueError(f"Unknown state fields {sorted(unknown)}; the "
                             f"fields are {FIELDS}.")
        self.vector.assign(np.array([values.get(name, 0.0)
                                     for name in FIELDS], "float32"))
        self.mask.assign(mask)

    @classmethod
    def build(cls, optimizer, name, mask_shape, mask_suffix):
        vector = optimizer.add_variable((len(FIELDS),), "zeros", "float32",
                                        name=f"{name}_state")
        mask = optimizer.add_variable(tuple(mask_shape), "ones", "bool",
                                      name=f"{name}_{mask_suffix}")
        return cls(vector, mask)


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
        """The heartbeat variable, made here where the optimizer does not
        carry one; set to -1 (no owning fit yet)."""
        if self.heartbeat is None:
            self.heartbeat = keras.Variable(np.array(-1, "int64"),
                                            dtype="int64", trainable=False)
        else:
            self.heartbeat.assign(-1)
        return self.heartbeat


class SparsityState:
    """The state of every steered member and of the runs, owned by the
    optimizer: `weights` (an `Entry` per weight with a proximal
    `LkRegularizer`, by variable id), `units` (an `Entry` per group of the
    optimizer's `UnitPlan`, in its order) and `runs` (a `RunState` per
    kind, `"weights"` and `"units"`: a SparsityTarget on the weights and
    one on the units may run in one fit)."""

    def __init__(self, weights, units, runs):
        self.weights = weights
        self.units = units
        self.runs = runs

    @classmethod
    def build(cls, optimizer, variables, plan):
        """Adds the state of `variables` (the weights with a proximal
        regularizer) and of `plan`'s groups (or None) to `optimizer`'s
        variables; None if there are neither."""
        if not variables and plan is None:
            return None
        weights = {id(v): Entry.build(optimizer, v.path.replace("/", "_")
                                      + "_sparsity", v.shape, "mask")
                   for v in variables}
        units = [Entry.build(optimizer, f"units_{index}", (group.size,),
                             "kept")
                 for index, group in enumerate(plan.groups if plan else ())]
        runs = {}
        if variables:
            runs["weights"] = RunState.build(optimizer, "sparsity")
        if plan is not None:
            runs["units"] = RunState.build(optimizer, "units")
        return cls(weights, units, runs)

    def __contains__(self, variable):
        return id(variable) in self.weights

    def of(self, variable):
        return self.weights[id(variable)]

    def fits(self, plan):
        """Whether the unit entries were built for `plan`'s groups."""
        return len(self.units) == len(plan.groups) and all(
            tuple(e.mask.shape) == (g.size,)
            for e, g in zip(self.units, plan.groups))


ProximalOptimizer.keep_state("sparsity", SparsityState.build)
