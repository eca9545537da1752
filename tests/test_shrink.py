"""`unit_groups`, `prune_units`, `shrink` and `macs` on small models of
every layer kind they know (`structure_models.py`): the pruned model and
the shrunk one give the same outputs, the couplings are right (each check
is also seen failing against a deliberate break of the coupling), and
every refusal names what it refuses.

Backend-neutral: `test_backends.py` runs this file again under JAX and
PyTorch."""

import os
import subprocess
import sys

import keras
import numpy as np
import pytest
from keras import layers as L

import keras_lk
from keras_lk.structure import channels, rules
import structure_models
from structure_models import MODELS, lively

to_numpy = keras.ops.convert_to_numpy


def assert_shrinks(model, x, fraction=0.5, min_removed=0.3):
    """Prunes `fraction` of every removable group, shrinks, and checks the
    outputs, the parameters and the multiply-accumulates."""
    dense = to_numpy(model(x))
    removed = keras_lk.prune_units(model, fraction)
    assert any(removed.values()), removed
    pruned = to_numpy(model(x))
    assert not np.allclose(dense, pruned), "pruning changed nothing"
    small = keras_lk.shrink(model)
    got = to_numpy(small(x))
    scale = float(np.max(np.abs(pruned)))
    assert float(np.max(np.abs(got - pruned))) <= 1e-5 * scale
    assert small.count_params() <= (1 - min_removed) * model.count_params()
    assert keras_lk.macs(small) == keras_lk.macs(model, live=True)
    assert keras_lk.macs(small) < keras_lk.macs(model)
    return small


@pytest.mark.parametrize("name", sorted(MODELS))
def test_a_pruned_model_shrinks_with_the_same_outputs(name):
    model, x = MODELS[name]()
    lively(model, kernels=True)
    small = assert_shrinks(model, x)
    assert [layer.name for layer in small.layers] == [
        layer.name for layer in model.layers]


def test_a_sequential_model_shrinks_to_a_sequential_model():
    model, x = structure_models.mlp()
    keras_lk.prune_units(model, 0.5)
    small = keras_lk.shrink(model)
    assert isinstance(small, keras.Sequential)
    assert small.get_layer("hidden").units == 8
    assert small.get_layer("second").units == 6


def groups_by_name(model):
    return {group.name: group for group in keras_lk.unit_groups(model)}


def test_a_residual_group_holds_both_producers_and_their_batch_norms():
    model, _ = structure_models.residual_cnn()
    group = groups_by_name(model)["stem"]
    assert group.size == 8 and group.removable
    assert set(group.layers) == {"stem", "stem_bn", "body", "body_bn",
                                 "branch", "fc"}
    assert {"stem_bn/moving_mean", "body_bn/gamma", "body/kernel",
            "body/bias", "fc/kernel"} <= set(group.paths)


def rows_of(model, group_name, path):
    """`{unit: indices}` of `path`'s slices in the group."""
    group = groups_by_name(model)[group_name]
    pieces = [p for p in group._analysis.slices_of(group._root)
              if p.variable.path == path]
    found = {}
    for piece in pieces:
        for unit, indices in zip(piece.units, piece.indices):
            found.setdefault(int(unit), []).extend(int(i) for i in indices)
    return found


def test_concatenate_offsets_and_flatten_positions_slice_the_consumer():
    model, _ = structure_models.residual_cnn()
    # concat = [stream (8), branch (6)] = 14 channels, flattened over the
    # 2 x 2 positions left after the poolings: row = position * 14 + c.
    stream = rows_of(model, "stem", "fc/kernel")
    branch = rows_of(model, "branch", "fc/kernel")
    assert sorted(stream[3]) == [3, 17, 31, 45]
    assert sorted(branch[0]) == [8, 22, 36, 50]
    assert sorted(branch[5]) == [13, 27, 41, 55]


def test_a_depthwise_channel_and_its_multiplier_go_with_their_input():
    model, _ = structure_models.convolutions()
    bias = rows_of(model, "conv", "depthwise/bias")
    assert sorted(bias[2]) == [4, 5]
    pointwise = rows_of(model, "conv", "separable/pointwise_kernel")
    assert sorted(pointwise[1]) == [4, 5, 6, 7]


def test_a_recurrent_unit_is_a_column_per_gate_and_its_recurrent_row():
    model, _ = structure_models.recurrent()
    gates = rows_of(model, "lstm", "lstm/lstm_cell/kernel")
    assert sorted(gates[1]) == [1, 11, 21, 31]
    # The recurrent kernel is sliced both ways: rows 1 and columns of 1.
    both = rows_of(model, "lstm", "lstm/lstm_cell/recurrent_kernel")
    assert sorted(both[1]) == [1, 1, 11, 21, 31]


def test_attention_heads_are_one_group_across_query_key_value_output():
    model, _ = structure_models.encoder()
    heads = groups_by_name(model)["mha0/heads"]
    assert heads.size == 4 and heads.removable
    assert {f"mha0/{p}/kernel" for p in (
        "query", "key", "value", "attention_output")} <= set(heads.paths)


def test_what_cannot_be_removed_is_reported_with_the_reason():
    model, _ = structure_models.encoder()
    groups = groups_by_name(model)
    stream = groups["embed"]
    assert not stream.removable
    assert "LayerNormalization" in stream.reason
    assert "output" in groups["head"].reason
    model, _ = structure_models.residual_cnn()
    assert "input" in groups_by_name(model)["pixels"].reason


def test_a_shared_layer_and_a_softmax_keep_their_units():
    inputs = keras.Input((4,))
    shared = L.Dense(6, name="shared")
    x = L.Dense(5, "softmax", name="soft")(shared(shared(L.Dense(6)(inputs))))
    model = keras.Model(inputs, L.Dense(2)(x))
    groups = groups_by_name(model)
    assert "shared layer" in groups["shared"].reason
    assert "softmax" in groups["soft"].reason


@keras.saving.register_keras_serializable(package="tests")
class Doubler(L.Layer):
    """A custom layer keras_lk cannot look inside."""

    def call(self, x):
        return 2 * x


def test_a_zero_group_held_by_an_unknown_layer_is_refused_by_name():
    inputs = keras.Input((4,))
    hidden = L.Dense(6, name="hidden")(inputs)
    model = keras.Model(inputs, L.Dense(2)(Doubler(name="doubler")(hidden)))
    group = groups_by_name(model)["hidden"]
    assert not group.removable and "Doubler" in group.reason
    dense = model.get_layer("hidden")
    kernel = np.array(dense.kernel.numpy())
    kernel[:, 0] = 0
    dense.kernel.assign(kernel)
    dense.bias.assign(np.zeros(6))
    with pytest.raises(ValueError, match="'hidden'.*Doubler.*unknown_layers"):
        keras_lk.shrink(model)
    kept = keras_lk.shrink(model, unknown_layers="keep")
    assert kept.get_layer("hidden").units == 6


class Subclassed(keras.Model):
    def __init__(self):
        super().__init__()
        self.dense = L.Dense(3)

    def call(self, x):
        return self.dense(x)


def test_a_subclassed_or_unbuilt_model_is_refused():
    model = Subclassed()
    model(np.zeros((1, 4), "float32"))
    for function in (keras_lk.unit_groups, keras_lk.shrink,
                     keras_lk.macs):
        with pytest.raises(ValueError,
                           match="subclassed.*Received: model of type Sub"):
            function(model)
    with pytest.raises(ValueError, match="built keras.Model"):
        keras_lk.prune_units(keras.Sequential([L.Dense(2)]), 0.5)


@pytest.mark.parametrize("kwargs, match", [
    ({"fraction": 1.0}, "fraction=1.0"),
    ({"fraction": -0.1}, "fraction=-0.1"),
    ({"fraction": "half"}, "fraction='half'"),
    ({"fraction": 0.5, "score": "l3"}, "score='l3'"),
    ({"fraction": 0.5, "round_to": 0}, "round_to=0"),
    ({"fraction": 0.5, "round_to": 2.5}, "round_to=2.5"),
])
def test_prune_units_refuses_bad_arguments(kwargs, match):
    model, _ = structure_models.mlp()
    with pytest.raises(ValueError, match=match):
        keras_lk.prune_units(model, **kwargs)


def test_shrink_and_strip_refuse_bad_arguments():
    model, _ = structure_models.mlp()
    with pytest.raises(ValueError, match="unknown_layers='ignore'"):
        keras_lk.shrink(model, unknown_layers="ignore")
    with pytest.raises(ValueError, match="shrink='yes'"):
        keras_lk.strip(model, shrink="yes")
    with pytest.raises(ValueError, match="p=3"):
        keras_lk.unit_groups(model)[1].norms(p=3)


def test_the_lowest_norm_units_go_and_round_to_rounds_the_kept_count():
    inputs = keras.Input((3,))
    layer = L.Dense(20, name="wide")
    model = keras.Model(inputs, L.Dense(1)(layer(inputs)))
    kernel = np.tile(np.arange(1, 21, dtype="float32"), (3, 1))
    kernel[:, [4, 9]] = 0.01  # the two weakest units
    layer.kernel.assign(kernel)
    removed = keras_lk.prune_units(model, 0.1)
    assert removed["wide"] == (4, 9)
    model, _ = structure_models.mlp()
    removed = keras_lk.prune_units(model, 0.5, round_to=8, score="l1")
    assert len(removed["hidden"]) == 8  # 8 kept of 16: a multiple already
    assert len(removed["second"]) == 4  # 6 kept, rounded up to 8
    assert keras_lk.shrink(model).get_layer("second").units == 8


def test_fraction_zero_removes_nothing():
    model, x = structure_models.residual_cnn()
    removed = keras_lk.prune_units(model, 0.0)
    assert not any(removed.values())
    small = keras_lk.shrink(model)
    assert small.count_params() == model.count_params()
    np.testing.assert_allclose(to_numpy(small(x)), to_numpy(model(x)),
                               rtol=1e-6, atol=1e-6)


def test_a_unit_counts_as_zero_only_with_its_consumers_slices():
    model, _ = structure_models.mlp()
    hidden = model.get_layer("hidden")
    kernel = np.array(hidden.kernel.numpy())
    kernel[:, 0] = 0
    hidden.kernel.assign(kernel)
    hidden.bias.assign(np.zeros(hidden.bias.shape))
    # Its input slice and bias are zero, the next layer's row is not.
    assert keras_lk.shrink(model).get_layer("hidden").units == 16
    second = model.get_layer("second")
    kernel = np.array(second.kernel.numpy())
    kernel[0] = 0
    second.kernel.assign(kernel)
    assert keras_lk.shrink(model).get_layer("hidden").units == 15


def test_a_layer_whose_units_are_all_zero_keeps_one():
    model, x = structure_models.mlp()
    hidden, second = model.get_layer("hidden"), model.get_layer("second")
    hidden.kernel.assign(np.zeros(hidden.kernel.shape))
    hidden.bias.assign(np.zeros(hidden.bias.shape))
    second.kernel.assign(np.zeros(second.kernel.shape))
    small = keras_lk.shrink(model)
    assert small.get_layer("hidden").units == 1
    np.testing.assert_allclose(to_numpy(small(x)), to_numpy(model(x)),
                               atol=1e-6)


def test_every_setting_and_name_is_kept():
    keras.config.set_dtype_policy("mixed_float16")
    inputs = keras.Input((5,))
    x = L.Dense(8, "relu", name="hidden",
                kernel_initializer="he_normal",
                kernel_regularizer=keras_lk.LkRegularizer(k=0.5, alpha=1e-3),
                bias_regularizer=keras.regularizers.L2(1e-4))(inputs)
    model = keras.Model(inputs, L.Dense(2, dtype="float32", name="out")(x))
    keras_lk.prune_units(model, 0.5)
    small = keras_lk.shrink(model)
    hidden = small.get_layer("hidden")
    assert hidden.units == 4
    assert hidden.dtype_policy.name == "mixed_float16"
    assert isinstance(hidden.kernel_regularizer, keras_lk.LkRegularizer)
    assert hidden.kernel_regularizer.k == 0.5
    assert isinstance(hidden.bias_regularizer, keras.regularizers.L2)
    assert isinstance(hidden.kernel_initializer,
                      keras.initializers.HeNormal)
    plain = keras_lk.strip(model, shrink=True)
    assert plain.get_layer("hidden").units == 4
    assert plain.get_layer("hidden").kernel_regularizer is None


def test_a_shrunk_model_trains():
    model, x = structure_models.residual_cnn()
    keras_lk.prune_units(model, 0.5)
    small = keras_lk.shrink(model)
    small.compile("adam", "mse")
    history = small.fit(x, np.zeros((len(x), 3)), epochs=2, verbose=0)
    assert np.all(np.isfinite(history.history["loss"]))


LOADER = """
import sys, keras, numpy as np
model = keras.saving.load_model(sys.argv[1])
x = np.load(sys.argv[2])
np.save(sys.argv[3], keras.ops.convert_to_numpy(model(x)))
assert "keras_lk" not in sys.modules
"""


def test_a_shrunk_model_saves_and_loads_without_keras_lk(tmp_path):
    model, x = structure_models.squeeze_excite()
    lively(model, kernels=True)
    keras_lk.prune_units(model, 0.5)
    small = keras_lk.shrink(model)
    small.save(tmp_path / "small.keras")
    np.save(tmp_path / "x.npy", x)
    subprocess.run(
        [sys.executable, "-c", LOADER, str(tmp_path / "small.keras"),
         str(tmp_path / "x.npy"), str(tmp_path / "y.npy")],
        check=True, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"),
        cwd=tmp_path)
    np.testing.assert_allclose(np.load(tmp_path / "y.npy"),
                               to_numpy(small(x)), rtol=1e-6, atol=1e-6)


def test_macs_count_each_layer_kind():
    tokens = keras.Input((5,), dtype="int32")
    x = L.Embedding(10, 4)(tokens)                   # 0
    x = L.LSTM(3, return_sequences=True)(x)          # 5 * 4 * (4 + 3) * 3
    x = L.MultiHeadAttention(2, 2, name="mha")(x, x)
    x = L.Conv1D(6, 2)(x)                            # 4 * 2 * 3 * 6
    x = L.DepthwiseConv1D(2)(x)                      # 3 * 2 * 6
    model = keras.Model(tokens, L.Dense(2)(x))       # 3 * 6 * 2
    # query/key/value: 5 * 3 * 2 * 2 each; scores and mix: 5 * 5 * 2 * 2
    # each; output: 5 * 2 * 2 * 3.
    attention = 3 * 60 + 2 * 100 + 60
    assert keras_lk.macs(model) == (420 + attention + 144 + 36 + 36)


BREAKS = {
    "a residual partner forgotten": (
        "residual_cnn", lambda mp: mp.setattr(
            channels.Spaces, "tie", lambda self, maps, layer: None)),
    "a squeeze-and-excitation partner forgotten": (
        "squeeze_excite", lambda mp: mp.setattr(
            channels.Spaces, "tie", lambda self, maps, layer: None)),
    "a BatchNormalization slice forgotten": (
        "residual_cnn", lambda mp: mp.setitem(
            rules.RULES, "BatchNormalization",
            lambda spaces, node, layer, maps, shape: maps[0])),
    "a Concatenate offset forgotten": (
        "residual_cnn", lambda mp: mp.setitem(
            rules.RULES, "Concatenate",
            lambda spaces, node, layer, maps, shape: channels.Channels.join(
                maps[::-1]))),
}


@pytest.mark.parametrize("name", sorted(BREAKS))
def test_each_coupling_check_fails_when_the_coupling_breaks(
        name, monkeypatch):
    model_name, breaking = BREAKS[name]
    model, x = MODELS[model_name]()
    lively(model, kernels=True)
    breaking(monkeypatch)
    with pytest.raises((AssertionError, ValueError)):
        assert_shrinks(model, x)


def test_a_layer_added_to_a_concatenation_follows_its_units():
    model, _ = structure_models.concat_residual()
    groups = groups_by_name(model)
    assert groups["branch_a"].removable and groups["branch_b"].removable
    assert "up" not in groups and "up2" not in groups  # no group of their own
    # Unit 1 of branch_b is position 4 + 1 of the stream: column 5 of `up`.
    assert sorted(rows_of(model, "branch_b", "up/kernel")[1]) == [5]
    assert sorted(rows_of(model, "branch_b", "up2/bias")[1]) == [5]
    assert sorted(rows_of(model, "branch_a", "bn/gamma")[3]) == [3]
