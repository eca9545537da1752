"""Regenerates the TensorBoard screenshots of the docs from real runs.

Run from the repository root (needs Chromium: `apt-get install chromium`):
`.venv/bin/python docs/make_screenshots.py`

It trains the getting-started model twice, with the L0.5 penalty as a
gradient (`quickstart`) and, stronger, as a proximal step (`proximal`),
and a small conv net on scikit-learn's digits toward whole units
(`units`: the group penalty with `SparsityTarget(structure="units",
target_macs=0.75)`), each logged with `LkMonitor`; serves the logs with
TensorBoard on 127.0.0.1; and has headless Chromium photograph the
Scalars, Histograms and Custom Scalars dashboards into
`docs/figures/tensorboard_*.png`.
"""

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402

import keras_lk  # noqa: E402

FIGURES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "figures")
PAGES = {
    "tensorboard_scalars.png": "#scalars&tagFilter=reg_share%2Ftotal%7C"
                               "%5Ezero_fraction%2Fhidden%24%7Cexact_zero_"
                               "fraction%2Fhidden%24&_smoothingWeight=0"
                               "&_ignoreYOutliers=false",
    "tensorboard_histograms.png": "#histograms&tagFilter=log10_abs_weights"
                                  "%2Fhidden%2Fkernel",
    "tensorboard_custom_scalars.png": "#custom_scalars",
    "tensorboard_unit_norms.png": "#histograms&tagFilter=unit_norms%2F"
                                  "(conv_2%7Chidden)%24",
    "tensorboard_live_units.png": "#scalars&tagFilter=live_units%2F%7C"
                                  "live_macs_fraction&_smoothingWeight=0"
                                  "&_ignoreYOutliers=false",
}


def train_units(log_dir):
    """A conv net on the digits, trained toward 3/4 of its
    multiply-accumulates removed, whole units at a time."""
    from sklearn.datasets import load_digits

    images, labels = load_digits(return_X_y=True)
    x = (images / 16.0).reshape(-1, 8, 8, 1).astype("float32")
    keras.utils.set_random_seed(0)
    model = keras.Sequential([
        keras.Input((8, 8, 1)),
        keras.layers.Conv2D(16, 3, padding="same", activation="relu",
                            name="conv_1"),
        keras.layers.Conv2D(32, 3, padding="same", activation="relu",
                            name="conv_2"),
        keras.layers.MaxPooling2D(2),
        keras.layers.Flatten(),
        keras.layers.Dense(64, activation="relu", name="hidden"),
        keras.layers.Dense(10, activation="softmax", name="output"),
    ])
    keras_lk.attach(model, keras_lk.LkRegularizer(
        k=0.5, alpha=1e-3, proximal=True), structure="units")
    model.compile(keras_lk.ProximalOptimizer(keras.optimizers.SGD(0.05)),
                  "sparse_categorical_crossentropy", metrics=["accuracy"])
    model.fit(x, labels, epochs=16, validation_split=0.2, verbose=0,
              callbacks=[keras_lk.SparsityTarget(structure="units",
                                                 target_macs=0.75),
                         keras_lk.LkMonitor(os.path.join(log_dir, "units"),
                                            units=True)])


def train(log_dir):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2000, 20)).astype("float32")
    y = (x[:, :5].sum(axis=1) > 0).astype("int32")
    # The same penalty as a gradient, and (stronger) as a proximal step.
    for name, alpha, proximal in (("quickstart", 0.05, False),
                                  ("proximal", 5.0, True)):
        keras.utils.set_random_seed(0)
        model = keras.Sequential([
            keras.Input((20,)),
            keras.layers.Dense(32, activation="relu", name="hidden",
                               kernel_regularizer=keras_lk.LkRegularizer(
                                   k=0.5, alpha=alpha, proximal=proximal)),
            keras.layers.Dense(2, activation="softmax", name="output"),
        ])
        optimizer = (keras_lk.ProximalOptimizer(keras.optimizers.SGD(0.1))
                     if proximal else "adam")
        model.compile(optimizer, "sparse_categorical_crossentropy",
                      metrics=["accuracy"])
        model.fit(x, y, epochs=10, validation_split=0.2, verbose=0,
                  callbacks=[keras_lk.LkMonitor(os.path.join(log_dir, name))])


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def main():
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        sys.exit("make_screenshots: needs Chromium (apt-get install chromium)")
    log_dir = tempfile.mkdtemp()
    train(log_dir)
    train_units(log_dir)
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "tensorboard.main", "--logdir", log_dir,
         "--host", "127.0.0.1", "--port", str(port)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        url = f"http://127.0.0.1:{port}/"
        for _ in range(120):
            try:
                urllib.request.urlopen(url, timeout=2)
                break
            except OSError:
                time.sleep(0.5)
        for name, page in PAGES.items():
            subprocess.run(
                [chromium, "--headless", "--no-sandbox", "--disable-gpu",
                 "--hide-scrollbars", "--window-size=1400,900",
                 "--virtual-time-budget=20000",
                 f"--screenshot={os.path.join(FIGURES, name)}", url + page],
                check=True, stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL, timeout=120)
            print(f"wrote docs/figures/{name}")
    finally:
        server.terminate()
        server.wait()


if __name__ == "__main__":
    main()
