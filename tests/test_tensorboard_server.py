"""A real TensorBoard server on 127.0.0.1 serves what the callbacks wrote."""

import json
import socket
import time
import urllib.parse
import urllib.request

import keras
import numpy as np
import pytest
from tensorboard import program

import keras_lk
from events import read


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def tensorboard_url(tmp_path):
    """Fits a model with LkMonitor, serves its log_dir, yields the URL."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((64, 4)).astype("float32")
    y = rng.standard_normal((64, 1)).astype("float32")
    model = keras.Sequential([
        keras.Input((4,)),
        keras.layers.Dense(3, name="first", kernel_regularizer=(
            keras_lk.LkRegularizer(k=1, alpha=0.1))),
        keras.layers.Dense(1, name="second"),
    ])
    model.compile(keras.optimizers.SGD(0.01), "mse")
    model.fit(x, y, epochs=2, validation_split=0.25, verbose=0,
              callbacks=[keras_lk.LkMonitor(tmp_path)])

    servers = []

    def make_server(app, flags):
        servers.append(program.WerkzeugServer(app, flags))
        return servers[-1]

    board = program.TensorBoard(server_class=make_server)
    board.configure(argv=[None, "--logdir", str(tmp_path), "--host",
                          "127.0.0.1", "--port", str(free_port()),
                          "--load_fast", "false", "--reload_interval", "0",
                          "--reload_task", "blocking"])
    url = board.launch()
    try:
        yield url.rstrip("/")
    finally:
        for server in servers:
            server.shutdown()
            server.server_close()


def get(url, path, **params):
    query = urllib.parse.urlencode(params)
    with urllib.request.urlopen(f"{url}/{path}?{query}", timeout=10) as reply:
        return json.loads(reply.read())


def poll(url, path, **params):
    """Ask until the data is there (loading may lag the server start)."""
    deadline = time.monotonic() + 60
    while True:
        try:
            result = get(url, path, **params)
            if result:
                return result
        except urllib.error.HTTPError:
            pass
        if time.monotonic() > deadline:
            raise AssertionError(f"TensorBoard never served {path} {params}")
        time.sleep(0.5)


@pytest.mark.slow
def test_server_serves_scalars_histograms_and_layout(tensorboard_url,
                                                    tmp_path):
    url = tensorboard_url
    scalars = poll(url, "data/plugin/scalars/scalars", run="train",
                   tag="reg_share/total")
    assert [point[1] for point in scalars] == [0, 1]
    # The served values are the ones the monitor wrote (the same tmp_path).
    written = read(tmp_path)[("train", "reg_share/total")]
    np.testing.assert_allclose([point[2] for point in scalars],
                               [written[0], written[1]], rtol=1e-6)
    assert written[0] != written[1]
    tags = poll(url, "data/plugin/scalars/tags")
    assert {"zero_fraction/first", "zero_fraction/second",
            "reg_share/first"} <= set(tags["train"])
    assert "reg_share/total" in tags["validation"]
    histograms = poll(url, "data/plugin/histograms/histograms", run="train",
                      tag="abs_weights/first/kernel")
    assert [entry[1] for entry in histograms] == [0, 1]
    buckets = histograms[-1][2]
    assert sum(bucket[2] for bucket in buckets) == 12
    layout = poll(url, "data/plugin/custom_scalars/layout")
    charts = {chart["title"]: chart["multiline"]["tag"]
              for category in layout["category"]
              for chart in category["chart"]}
    assert charts["zero fraction (|w| <= tol), every layer"] == [
        "zero_fraction/.*"]
    assert charts["penalty share of the loss, every layer"] == ["reg_share/.*"]
