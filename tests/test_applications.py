"""`prune_units(m, 0.5)` then `shrink` on every `keras.applications`
family (random weights, `weights=None`) and on the model zoo: the same
outputs, a `.keras` round trip, and at least 30% of the parameters gone.
The larger families are slow-marked; `keras-lk`'s coverage table
(`benchmarks/bench_shrink.py coverage`) reports the same runs' figures."""

import keras
import numpy as np
import pytest

import keras_lk
import zoo
from structure_models import lively

# family: (constructor, input side, in the fast subset). The fast subset
# keeps MobileNetV3: squeeze-and-excitation, `keras.ops` calls, depthwise
# convolutions and residuals in one small model.
FAMILIES = {
    "ConvNeXt": ("ConvNeXtTiny", 32, False),
    "DenseNet": ("DenseNet121", 32, False),
    "EfficientNet": ("EfficientNetB0", 32, False),
    "EfficientNetV2": ("EfficientNetV2B0", 32, False),
    "InceptionResNetV2": ("InceptionResNetV2", 75, False),
    "InceptionV3": ("InceptionV3", 75, False),
    "MobileNet": ("MobileNet", 32, False),
    "MobileNetV2": ("MobileNetV2", 32, False),
    "MobileNetV3": ("MobileNetV3Small", 32, True),
    "NASNet": ("NASNetMobile", 32, False),
    "ResNet": ("ResNet50", 32, False),
    "ResNetV2": ("ResNet50V2", 32, False),
    "VGG": ("VGG16", 32, False),
    "Xception": ("Xception", 71, False),
}


def family_params():
    for family, (_, _, fast) in FAMILIES.items():
        marks = () if fast else (pytest.mark.slow,)
        yield pytest.param(family, marks=marks, id=family)


def build(family):
    constructor, side, _ = FAMILIES[family]
    model = getattr(keras.applications, constructor)(
        weights=None, input_shape=(side, side, 3), classes=10,
        classifier_activation=None)
    x = np.random.default_rng(0).uniform(0, 255, (2, side, side, 3))
    return lively(model), x.astype("float32")


def shrinks_exactly(model, x, tmp_path, min_removed=0.3):
    keras_lk.prune_units(model, 0.5)
    pruned = keras.ops.convert_to_numpy(model(x))
    small = keras_lk.shrink(model)
    got = keras.ops.convert_to_numpy(small(x))
    scale = float(np.max(np.abs(pruned)))
    assert float(np.max(np.abs(got - pruned))) <= 1e-5 * scale
    assert small.count_params() <= (1 - min_removed) * model.count_params()
    assert keras_lk.macs(small) == keras_lk.macs(model, live=True)
    small.save(tmp_path / "small.keras")
    loaded = keras.saving.load_model(tmp_path / "small.keras")
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(loaded(x)), got)
    return small


@pytest.mark.parametrize("family", family_params())
def test_every_application_family_shrinks_exactly(family, tmp_path):
    model, x = build(family)
    shrinks_exactly(model, x, tmp_path)


def test_convnext_keeps_its_residual_stream_and_says_why():
    model, _ = build("ConvNeXt")
    groups = keras_lk.unit_groups(model)
    kept = [g for g in groups if not g.removable and "stem" in g.name]
    assert kept and "LayerNormalization" in kept[0].reason
    ffn = [g for g in groups if g.name.endswith("pointwise_conv_1")]
    assert len(ffn) == 18 and all(g.removable for g in ffn)


@pytest.mark.parametrize("name", ["recurrent", "embedding_bag",
                                  pytest.param("resnet50",
                                               marks=pytest.mark.slow),
                                  pytest.param("mobilenet_v3_small",
                                               marks=pytest.mark.slow)])
def test_zoo_models_shrink_exactly(name, tmp_path):
    entry = zoo.ZOO[name]
    model = lively(entry.build(), kernels=name != "resnet50")
    x, _ = entry.data(np.random.default_rng(0))
    shrinks_exactly(model, x[:4], tmp_path)


@pytest.mark.parametrize("name", ["bert_like", "gpt_like"])
def test_custom_transformer_blocks_are_reported_not_rebuilt(name):
    """The zoo's Transformers are keras_hub-style custom layers: their
    insides are no group, and what touches them says so."""
    model = zoo.ZOO[name].build()
    groups = keras_lk.unit_groups(model)
    assert not any(g.removable for g in groups)
    reasons = " ".join(r for g in groups for r in g.reasons)
    assert "PositionEmbedding" in reasons
    assert keras_lk.prune_units(model, 0.5) == {}
    assert keras_lk.shrink(model).count_params() == model.count_params()


def keras_hub_backbones():
    """keras_hub backbones built from their arguments (no preset, no
    download), small."""
    import keras_hub
    models = keras_hub.models
    return {
        "ResNet (bottleneck)": models.ResNetBackbone(
            input_conv_filters=[64], input_conv_kernel_sizes=[7],
            stackwise_num_filters=[64, 128], stackwise_num_blocks=[2, 2],
            stackwise_num_strides=[1, 2], block_type="bottleneck_block",
            image_shape=(32, 32, 3)),
        "ResNetV2 (basic, pre-activation)": models.ResNetBackbone(
            input_conv_filters=[64], input_conv_kernel_sizes=[3],
            stackwise_num_filters=[64, 128], stackwise_num_blocks=[1, 1],
            stackwise_num_strides=[1, 2], block_type="basic_block",
            use_pre_activation=True, image_shape=(32, 32, 3)),
        "VGG": models.VGGBackbone(stackwise_num_repeats=[1, 2],
                                  stackwise_num_filters=[8, 16],
                                  image_shape=(32, 32, 3)),
        "DenseNet": models.DenseNetBackbone(stackwise_num_repeats=[2, 2],
                                            image_shape=(32, 32, 3)),
    }


def test_keras_hub_backbones_shrink_exactly(tmp_path):
    """keras_hub's Backbones are Functional subclasses: they shrink to a
    plain Functional model with the same layers."""
    x = np.random.default_rng(0).normal(size=(2, 32, 32, 3))
    for name, backbone in keras_hub_backbones().items():
        lively(backbone, kernels=True)
        small = shrinks_exactly(backbone, x.astype("float32"), tmp_path)
        assert type(small) is not type(backbone), name


def test_a_keras_hub_transformer_is_read_inside_its_blocks():
    """keras_hub's TransformerEncoder has a rule (tests/test_hub.py has the
    families): its feed-forward units go; its heads, whose size BERT
    derives from hidden_dim, say why they stay."""
    import keras_hub
    backbone = keras_hub.models.BertBackbone(
        vocabulary_size=50, num_layers=2, num_heads=2, hidden_dim=32,
        intermediate_dim=64, max_sequence_length=16)
    groups = {g.name: g for g in keras_lk.unit_groups(backbone)}
    assert groups["transformer_layer_0/ffn"].removable
    assert "derives the head size" in groups[
        "transformer_layer_0/heads"].reason


@pytest.mark.slow
@pytest.mark.parametrize("allocation", ("uniform", "adaptive"))
def test_a_keras_application_trains_toward_half_its_macs_and_shrinks(
        allocation):
    """The group penalty and SparsityTarget(structure="units") on a model
    keras_lk was not tuned on: MobileNetV3Small, with its squeeze-and-
    excitation gates, hard-swish (`x + 3.0`) and depthwise convolutions;
    every group the same fraction, and units ranked across its 27 groups."""
    model = keras.applications.MobileNetV3Small(
        weights=None, input_shape=(64, 64, 3), classes=10,
        include_preprocessing=False)
    keras_lk.attach(model, keras_lk.LkRegularizer(0, 1e-3, proximal=True),
                    structure="units")
    model.compile(keras_lk.ProximalOptimizer(keras.optimizers.SGD(0.01)),
                  "sparse_categorical_crossentropy")
    x = np.random.default_rng(0).normal(size=(32, 64, 64, 3)).astype(
        "float32")
    model.fit(x, np.arange(32) % 10, epochs=2, batch_size=8, verbose=0,
              callbacks=[keras_lk.SparsityTarget(
                  structure="units", target_macs=0.5,
                  allocation=allocation)])
    left = keras_lk.macs(model, live=True) / keras_lk.macs(model)
    assert 0.4 < left <= 0.5
    small = keras_lk.strip(model, shrink=True)
    assert keras_lk.macs(small) == keras_lk.macs(model, live=True)
    np.testing.assert_allclose(small.predict(x[:4], verbose=0),
                               model.predict(x[:4], verbose=0), atol=1e-5)
