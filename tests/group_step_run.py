"""Run under a backend by test_backends.py: one group proximal step per k
from the same weights, short SparsityTarget(structure="units") fits (each
allocation), and one gradient step of the penalty with proximal=False;
writes what it got to the .npz file named on the command line."""

import os
import sys

import keras
import numpy as np

import keras_lk
from keras_lk.penalties.plan import UnitPlan

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from test_group_penalty import conv_model, data, zero_loss  # noqa: E402


def fixed_weights(model):
    rng = np.random.default_rng(0)
    model.set_weights([rng.normal(scale=0.3, size=w.shape).astype("float32")
                       for w in model.get_weights()])


def main(path):
    out = {}
    for k in (0.0, 0.3, 0.5, 1.0, 1.5):
        model = conv_model()
        fixed_weights(model)
        keras_lk.attach(model, keras_lk.LkRegularizer(
            k, 2.0, "sum", proximal=True), structure="units")
        plan = UnitPlan.build(model.trainable_weights)
        for variable, value in zip(plan.variables,
                                   plan.step(0.1, lambda v: v.value)):
            out[f"{k}/{variable.path}"] = keras.ops.convert_to_numpy(value)
    model = conv_model(units=32)
    fixed_weights(model)
    keras_lk.attach(model, keras_lk.LkRegularizer(0.5, 1e-3, proximal=True),
                    structure="units")
    model.compile(keras_lk.ProximalOptimizer(keras.optimizers.SGD(0.05)),
                  keras.losses.BinaryCrossentropy(from_logits=True))
    x, y = data(64)
    model.fit(x, y, epochs=2, batch_size=16, shuffle=False, verbose=0,
              callbacks=[keras_lk.SparsityTarget(0.5, structure="units")])
    for group in keras_lk.unit_groups(model):
        out[f"live/{group.name}"] = np.array(group.live())
    for allocation in ("global", "adaptive"):
        model = conv_model(units=32)
        fixed_weights(model)
        keras_lk.attach(model, keras_lk.LkRegularizer(0, 1e-3, proximal=True),
                        structure="units")
        model.compile(keras_lk.ProximalOptimizer(keras.optimizers.SGD(0.01)),
                      keras.losses.BinaryCrossentropy(from_logits=True))
        model.fit(x, y, epochs=2, batch_size=16, shuffle=False, verbose=0,
                  callbacks=[keras_lk.SparsityTarget(
                      0.5, structure="units", allocation=allocation)])
        for group in keras_lk.unit_groups(model):
            out[f"{allocation}/{group.name}"] = np.flatnonzero(group.norms(2))
    model = conv_model()
    fixed_weights(model)
    keras_lk.attach(model, keras_lk.LkRegularizer(0.5, 0.01, "sum"),
                    structure="units")
    model.compile(keras.optimizers.SGD(0.1), zero_loss)
    model.fit(x[:16], y[:16], batch_size=16, verbose=0)
    for variable in model.trainable_weights:
        out[f"gradient/{variable.path}"] = keras.ops.convert_to_numpy(
            variable)
    np.savez(path, **out)


if __name__ == "__main__":
    main(sys.argv[1])
