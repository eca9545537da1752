"""Groups and allocation: which weights SparsityTarget covers, and which
of them reach one target together, compared on one scale.

- `"global"`: one group of every covered weight (one threshold on `|w|`);
- `"uniform"`: a group per layer, each reaching the target on its own;
- `"normalized"`: one group, each weight measured in units of its layer's
  RMS at the run's start;
- a dict target: a group per named layer, with its own target.
"""

import math

import numpy as np

from keras_lk.monitoring import tags
from keras_lk.attach.walk import weights_by_layer
from keras_lk.penalties.regularizers import LkRegularizer
from keras_lk.core.chain import unwrap

ALLOCATIONS = ("global", "uniform", "normalized")


class WeightGroup:
    """Weights that reach one target together, compared on one scale."""

    def __init__(self, name, variables, target, k):
        self.name = name
        self.variables = variables
        self.target = target
        self.k = k
        self.size = sum(math.prod(v.shape) for v in variables)


def covered_layers(model):
    """`[(layer path, [variables])]` of the weights SparsityTarget covers:
    trainable, with a proximal LkRegularizer of k <= 1."""
    layers = []
    for path, weights in weights_by_layer(model):
        covered = []
        for _, variable in weights:
            regularizer = unwrap(getattr(variable, "regularizer", None))
            if not (variable.trainable
                    and isinstance(regularizer, LkRegularizer)
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
            f"(k <= 1) in model {model.name!r}: give the weights to sparsify "
            "LkRegularizer(k=1, 0.5 or 0, alpha=..., proximal=True).")
    return layers


def check_state(layers, state):
    """Every covered weight has its state in the optimizer (`state`, a
    `SparsityState` or None), made when the optimizer was built."""
    late = [v.path for _, variables in layers for v in variables
            if state is None or v not in state]
    if late:
        raise ValueError(
            "SparsityTarget keeps each weight's state in the "
            "ProximalOptimizer's variables, made when it was built; "
            f"the weights {late} got their proximal LkRegularizer after "
            "that (attach after compile and fit, or after loading a "
            "model). Compile again with a new keras_lk.ProximalOptimizer"
            "(...) before this fit.")


def allocate(layers, target, allocation):
    """The `WeightGroup`s of the covered `layers` for `target` (a fraction, or a
    dict by layer path) under `allocation`."""
    if isinstance(target, dict):
        known = {path for path, _ in layers}
        unknown = sorted(set(target) - known)
        if unknown:
            raise ValueError(
                f"SparsityTarget has targets for layers without a "
                f"proximal LkRegularizer (k <= 1): {unknown}. Layers it "
                f"covers: {sorted(known)}")
        named = [(path, variables, target[path])
                 for path, variables in layers if path in target]
    elif allocation == "uniform":
        named = [(path, variables, target) for path, variables in layers]
    else:
        named = [(tags.ALL_LAYERS, [v for _, variables in layers
                                    for v in variables], target)]
    groups = []
    for name, variables, fraction in named:
        ks = sorted({unwrap(v.regularizer).k for v in variables})
        if len(ks) > 1:
            raise ValueError(
                f"SparsityTarget compares the weights of one group on one "
                f"scale, which needs one k: group {name!r} has k in {ks}. "
                f"Give them the same k, or use allocation='uniform' (a "
                f"group per layer). Received: " + ", ".join(
                    f"{v.path}: {unwrap(v.regularizer)!r}"
                    for v in variables))
        groups.append(WeightGroup(name, variables, fraction, ks[0]))
    return groups


def scales(groups, allocation):
    """Each covered weight's scale `u` (by variable id), the one its
    magnitudes are compared on (`|w| / u`): its RMS at the run's start (1
    if it is all zeros) for `"normalized"`, else 1."""
    found = {}
    for group in groups:
        for variable in group.variables:
            scale = 1.0
            if allocation == "normalized":
                rms = float(np.sqrt(np.mean(np.square(
                    variable.numpy().astype("float64")))))
                scale = rms if rms > 0 else 1.0
            found[id(variable)] = scale
    return found
