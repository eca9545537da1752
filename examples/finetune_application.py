"""Attach an Lk penalty to a `keras.applications` model and fine-tune it.

Run: `python examples/finetune_application.py [--logdir runs/mobilenet] [--quick]`

MobileNetV2 (`weights=None` here, so nothing is downloaded; pass
`weights="imagenet"` for a pretrained one) on 32x32 images made with NumPy.
`attach` gives every Conv2D an L1 penalty after the model was built, the
model is fine-tuned with `LkMonitor`, and `detach` takes the penalty off
again. The model saves with its penalties.
"""

import argparse
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402

import keras_lk  # noqa: E402


def main(logdir="runs/mobilenet", epochs=3, samples=256, out=None):
    rng = np.random.default_rng(0)
    x = rng.uniform(size=(samples, 32, 32, 3)).astype("float32")
    y = rng.integers(0, 10, samples)
    keras.utils.set_random_seed(0)
    model = keras.applications.MobileNetV2(
        input_shape=(32, 32, 3), weights=None, classes=10)
    layers = keras_lk.attach(model, keras_lk.LkRegularizer(k=1, alpha=1e-4),
                             layer_types=keras.layers.Conv2D)
    print(f"attached to {len(layers)} Conv2D layers, e.g. "
          f"{[layer.name for layer in layers[:3]]}")
    model.compile(keras.optimizers.Adam(1e-3),
                  "sparse_categorical_crossentropy", metrics=["accuracy"])
    history = model.fit(x, y, epochs=epochs, batch_size=32, verbose=0,
                        callbacks=[keras_lk.LkMonitor(logdir)])
    print(f"penalty share of the loss, last epoch: "
          f"{history.history['reg_share'][-1]:.2%}")
    if out:
        model.save(out)  # the Conv2D configs record the regularizer
    keras_lk.detach(model, layer_types=keras.layers.Conv2D)
    print(f"after detach, penalties in model.losses: {len(model.losses)}")
    print(f"tensorboard --logdir {logdir} --host 127.0.0.1")
    return history


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--logdir", default="runs/mobilenet")
    parser.add_argument("--out", default=None, help="save the model here")
    parser.add_argument("--quick", action="store_true",
                        help="one epoch on 64 images (a smoke run)")
    args = parser.parse_args()
    main(args.logdir, *((1, 64) if args.quick else (3, 256)), out=args.out)
