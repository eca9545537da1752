"""The peer: tfmot's `prune_low_magnitude` on the sparsity suite's models.

tfmot (tensorflow-model-optimization) supports Keras 2 only, so this runs
in its own environment, with tf-keras, never in the project's:

    python3 -m venv tfmot-env
    tfmot-env/bin/pip install tensorflow-cpu==2.21.0 tf-keras~=2.21.0 \
        tensorflow-model-optimization scikit-learn
    TF_USE_LEGACY_KERAS=1 tfmot-env/bin/python benchmarks/tfmot_peer.py \
        [--models digits_mlp small_output_mlp digits_conv embedding \
                  transformer] \
        [--targets 0.9 0.95] [--seeds 0 1 2] [--epochs N] [--init DIR] \
        [--fixed-order]

Same data (keras_lk/study/suite_data.py, loaded by path: no keras_lk or
Keras 3 import), same layer sizes, optimizer, batch size, epochs and seeds
as `keras-lk sweep`; the same cubic schedule from step 0 to 3/4 of the
steps, pruning every 10 steps (`PolynomialDecay(power=3, frequency=10)`),
then fine-tuning with the mask fixed. tfmot prunes every layer to the
target on its own (uniform allocation). Results are appended to
benchmarks/results/tfmot.json. Not part of the test command.

Initial weights: tf-keras draws the same ones from a seed as Keras 3 for
the four Sequential models (checked: equal to the bit), not for the
transformer, whose attention weights it draws in another order. `--init
DIR` makes sure of it: every run starts from the weights keras_lk's sweep
starts from for that model and seed, written by
`benchmarks/suite_init.py DIR --models ...` (the transformer's results in
benchmarks/results/ were run with it).

Batches: each framework shuffles with its own generator, so the batches
differ. With `--fixed-order` both train on one order drawn with numpy from
the seed (`suite_data.fixed_order`; keras_lk's side:
`benchmarks/sparsity_suite.py --fixed-order`), results in
benchmarks/results/tfmot_fixed_order.json: then the methods alone differ.
"""

import argparse
import importlib.util
import json
import math
import os
import statistics
import time

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
import tensorflow_model_optimization as tfmot  # noqa: E402

keras = tf.keras  # tf-keras (Keras 2), what tfmot needs

HERE = os.path.dirname(os.path.abspath(__file__))
_spec = importlib.util.spec_from_file_location(
    "suite_data", os.path.join(HERE, "..", "keras_lk", "study",
                               "suite_data.py"))
data = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(data)

END_FRACTION = 0.75
PRUNE_EVERY = 10


def _dense(units, activation, name):
    return keras.layers.Dense(units, activation=activation, name=name)


# The suite's models (keras_lk/study/suite.py), layer for layer, in tf-keras.
MODELS = {
    "digits_mlp": (lambda: [keras.Input((64,)), _dense(64, "relu", "hidden"),
                            _dense(10, "softmax", "output")],
                   data.load_digits, 20, lambda: keras.optimizers.SGD(0.1)),
    "small_output_mlp": (
        lambda: [keras.Input((20,)), _dense(128, "relu", "hidden_1"),
                 _dense(64, "relu", "hidden_2"),
                 _dense(3, "softmax", "output")],
        data.teacher_data, 30, lambda: keras.optimizers.SGD(0.05)),
    "digits_conv": (
        lambda: [keras.Input((8, 8, 1)),
                 keras.layers.Conv2D(16, 3, padding="same", activation="relu",
                                     name="conv_1"),
                 keras.layers.Conv2D(32, 3, padding="same", activation="relu",
                                     name="conv_2"),
                 keras.layers.MaxPooling2D(2), keras.layers.Flatten(),
                 _dense(10, "softmax", "output")],
        data.digit_images, 20, lambda: keras.optimizers.SGD(0.05)),
    "embedding": (
        lambda: [keras.Input((data.LENGTH,), dtype="int32"),
                 keras.layers.Embedding(data.VOCAB, 16, name="embedding"),
                 keras.layers.GlobalAveragePooling1D(),
                 _dense(32, "relu", "hidden"), _dense(2, "softmax", "output")],
        data.token_counts_data, 15, lambda: keras.optimizers.Adam(3e-3)),
    "transformer": (lambda: transformer(), data.order_data, 15,
                    lambda: keras.optimizers.Adam(3e-3)),
}
PRUNED = (keras.layers.Dense, keras.layers.Conv2D, keras.layers.Embedding,
          keras.layers.MultiHeadAttention)


class PositionEmbedding(keras.layers.Layer):
    """Adds a learned embedding of each position (the suite's own layer)."""

    def build(self, input_shape):
        self.position = self.add_weight(
            shape=tuple(input_shape[1:]), initializer="random_normal",
            name="position_embeddings")

    def call(self, x):
        return x + self.position


def transformer():
    """The suite's transformer, as a functional tf-keras model."""
    tokens = keras.Input((data.SEQUENCE,), dtype="int32")
    x = keras.layers.Embedding(data.TOKENS, 32, name="tokens")(tokens)
    x = PositionEmbedding(name="position")(x)
    attention = keras.layers.MultiHeadAttention(2, 16, name="mha")(x, x)
    x = keras.layers.LayerNormalization(name="norm_1")(x + attention)
    hidden = keras.layers.Dense(64, activation="relu", name="ffn_1")(x)
    hidden = keras.layers.Dense(32, name="ffn_2")(hidden)
    x = keras.layers.LayerNormalization(name="norm_2")(x + hidden)
    x = keras.layers.GlobalAveragePooling1D()(x)
    outputs = _dense(6, "softmax", "output")(x)
    return keras.Model(tokens, outputs, name="transformer")


def pruned_weights(layer):
    """The weights keras_lk's suite prunes: kernels (attention's four), or
    the embeddings."""
    if isinstance(layer, keras.layers.Embedding):
        return [layer.embeddings]
    if isinstance(layer, keras.layers.MultiHeadAttention):
        return [v for v in layer.trainable_weights if "kernel" in v.name]
    return [layer.kernel]


def load_initial_weights(model, path):
    """Sets every layer's weights (inside tfmot's wrappers too) from the
    `<layer name>:<index>` arrays of `benchmarks/suite_init.py`."""
    saved = np.load(path)
    names = set()
    for layer in model.layers:
        inner = getattr(layer, "layer", layer)  # a PruneLowMagnitude wrapper
        count = len(inner.get_weights())
        inner.set_weights([saved[f"{inner.name}:{index}"]
                           for index in range(count)])
        names |= {f"{inner.name}:{index}" for index in range(count)}
    if names != set(saved.files):
        raise ValueError(f"{path} holds {sorted(saved.files)}, the model "
                         f"{sorted(names)}")


def run(model_name, target, seed, epochs, init=None, fixed_order=False):
    layers, load, default_epochs, optimizer = MODELS[model_name]
    epochs = epochs or default_epochs
    x_train, y_train, x_test, y_test = load(seed)
    fit_epochs, shuffle = epochs, True
    if fixed_order:
        # The batches keras_lk's sweep trains on with fixed_order=True.
        x_train, y_train = data.fixed_order(x_train, y_train, seed, epochs)
        fit_epochs, shuffle = 1, False
    steps = math.ceil(len(x_train) / 32) * fit_epochs
    keras.utils.set_random_seed(seed)
    built = layers()
    model = (built if isinstance(built, keras.Model)
             else keras.Sequential(built))
    if target:
        schedule = tfmot.sparsity.keras.PolynomialDecay(
            initial_sparsity=0.0, final_sparsity=target, begin_step=0,
            end_step=max(1, int(END_FRACTION * steps)), power=3,
            frequency=PRUNE_EVERY)
        model = keras.models.clone_model(model, clone_function=lambda layer: (
            tfmot.sparsity.keras.prune_low_magnitude(
                layer, pruning_schedule=schedule)
            if isinstance(layer, PRUNED) else layer))
    if init:
        load_initial_weights(model, os.path.join(
            init, f"{model_name}_seed{seed}.npz"))
    model.compile(optimizer(), "sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    callbacks = [tfmot.sparsity.keras.UpdatePruningStep()] if target else []
    model.fit(x_train, y_train, batch_size=32, epochs=fit_epochs,
              shuffle=shuffle, verbose=0, callbacks=callbacks)
    accuracy = float(model.evaluate(x_test, y_test, verbose=0)[1])
    if target:
        model = tfmot.sparsity.keras.strip_pruning(model)
    kernels = [weight.numpy() for layer in model.layers
               if isinstance(layer, PRUNED)
               for weight in pruned_weights(layer)]
    zeros = sum(int((k == 0).sum()) for k in kernels) / sum(
        k.size for k in kernels)
    return accuracy, zeros, epochs


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS),
                        choices=list(MODELS))
    parser.add_argument("--targets", type=float, nargs="+",
                        default=[0.9, 0.95])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=None)
    parser.add_argument("--init", default=None,
                        help="start from keras_lk's initial weights, "
                        "written here by benchmarks/suite_init.py")
    parser.add_argument("--fixed-order", action="store_true",
                        help="train on the batches keras_lk's sweep trains "
                        "on with fixed_order=True")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    args.out = args.out or os.path.join(
        HERE, "results", "tfmot_fixed_order.json" if args.fixed_order
        else "tfmot.json")
    records = []
    if os.path.exists(args.out):
        with open(args.out) as f:
            records = json.load(f)
    for model_name in args.models:
        started = time.time()
        lines = []
        for target in [0.0, *args.targets]:
            results = [run(model_name, target, seed, args.epochs,
                           args.init, args.fixed_order)
                       for seed in args.seeds]
            epochs = results[0][2]
            for seed, (accuracy, zeros, _) in zip(args.seeds, results):
                records = [r for r in records if not (
                    r["model"] == model_name and r["target"] == target
                    and r["seed"] == seed and r["epochs"] == epochs)]
                records.append({"model": model_name, "target": target,
                                "seed": seed, "epochs": epochs,
                                "method": "tfmot" if target else "dense",
                                "order": "fixed" if args.fixed_order
                                else "shuffled",
                                "init": "keras_lk" if args.init
                                else "tf-keras",
                                "accuracy": accuracy, "sparsity": zeros})
            accuracies = [a for a, _, _ in results]
            lines.append(
                f"  {'dense' if not target else f'{target:.0%} zeros':>10}: "
                f"{statistics.mean(accuracies):.3f} ± "
                f"{statistics.stdev(accuracies) if len(accuracies) > 1 else 0:.3f}"
                f" ({statistics.mean(z for _, z, _ in results):.1%} zeros)")
        print(f"{model_name}, {epochs} epochs, tfmot prune_low_magnitude "
              f"({time.time() - started:.0f} s)")
        print("\n".join(lines), flush=True)
        os.makedirs(os.path.dirname(args.out), exist_ok=True)
        with open(args.out, "w") as f:
            json.dump(records, f, indent=1)


if __name__ == "__main__":
    main()
