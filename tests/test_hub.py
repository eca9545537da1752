"""keras_hub's Transformers: their units, blocks and heads go, and a shrunk
backbone stays a model of its own class (saved, loaded from a preset,
generating the same tokens)."""

import os
import warnings

import keras
import numpy as np
import pytest

import keras_lk

keras_hub = pytest.importorskip("keras_hub")

TEXT = dict(vocabulary_size=50, num_layers=2, hidden_dim=16,
            intermediate_dim=64)
GQA = dict(TEXT, num_query_heads=4, num_key_value_heads=2)
# name: (backbone class, its arguments, its CausalLM or None, heads go).
FAMILIES = {
    "bert": ("BertBackbone", dict(TEXT, num_heads=2, max_sequence_length=16),
             None, False),
    "gpt2": ("GPT2Backbone", dict(TEXT, num_heads=2, max_sequence_length=16),
             "GPT2CausalLM", False),
    "gemma": ("GemmaBackbone", dict(GQA, head_dim=8), "GemmaCausalLM", True),
    "gemma3": ("Gemma3Backbone", dict(GQA, head_dim=8, image_size=16,
                                      vision_encoder=None),
               "Gemma3CausalLM", True),
    "llama": ("LlamaBackbone", GQA, "LlamaCausalLM", False),
    "mistral": ("MistralBackbone", GQA, "MistralCausalLM", True),
    "qwen": ("QwenBackbone", GQA, "QwenCausalLM", False),
    "qwen3": ("Qwen3Backbone", dict(GQA, head_dim=8), "Qwen3CausalLM", True),
    "phi3": ("Phi3Backbone", GQA, "Phi3CausalLM", False),
    "gpt_neox": ("GPTNeoXBackbone", dict(TEXT, num_heads=2,
                                         max_sequence_length=16),
                 "GPTNeoXCausalLM", False),
    "vit": ("ViTBackbone", dict(image_shape=(16, 16, 3), patch_size=8,
                                num_layers=2, num_heads=2, hidden_dim=16,
                                mlp_dim=64), None, False),
}


def backbone(name, seed=0):
    keras.utils.set_random_seed(seed)
    cls, arguments, _, _ = FAMILIES[name]
    return getattr(keras_hub.models, cls)(**arguments)


def inputs_of(model, seed=0):
    rng = np.random.default_rng(seed)
    names = [t.name for t in keras.tree.flatten(model.input)]
    if "images" in names:
        return rng.normal(size=(2, 16, 16, 3)).astype("float32")
    batch = {"token_ids": rng.integers(0, 50, (2, 8)).astype("int32"),
             "padding_mask": np.ones((2, 8), "int32")}
    if "segment_ids" in names:
        batch["segment_ids"] = np.zeros((2, 8), "int32")
    return batch


def gap(a, b):
    """The largest difference of two outputs, over the output's scale."""
    worst = 0.0
    for x, y in zip(keras.tree.flatten(a), keras.tree.flatten(b)):
        x = keras.ops.convert_to_numpy(x).astype(np.float64)
        y = keras.ops.convert_to_numpy(y).astype(np.float64)
        worst = max(worst, float(np.max(np.abs(x - y)) / (
            np.max(np.abs(x)) + 1e-12)))
    return worst


def core_parameters(model):
    """Parameters outside the embeddings and the norms."""
    def counted(path):
        parts = path.split("/")
        return not any("embedding" in p or "norm" in p or p.startswith("ln")
                       for p in parts)
    return sum(int(np.prod(v.shape)) for v in model.weights
               if counted(v.path))


def greedy(lm_class, model):
    lm = getattr(keras_hub.models, lm_class)(backbone=model,
                                             preprocessor=None)
    lm.compile(sampler="greedy")
    prompt = {"token_ids": np.array([[3, 7, 9, 0, 0, 0, 0, 0]], "int32"),
              "padding_mask": np.array([[1, 1, 1, 0, 0, 0, 0, 0]], bool)}
    # `generate_step` is what `generate` runs per batch, without the
    # output normalization that Gemma3's text-only outputs trip.
    prompt = {k: keras.ops.convert_to_tensor(v) for k, v in prompt.items()}
    out = lm.generate_step(prompt, stop_token_ids=None)
    return keras.ops.convert_to_numpy(out["token_ids"])


# One fast family per rule (Gemma's heads cover the KV grouping); the
# others run with the slow tests.
FAST = {"bert", "llama", "gemma", "gpt_neox", "vit"}


@pytest.mark.parametrize("name", [
    name if name in FAST else pytest.param(name, marks=pytest.mark.slow)
    for name in sorted(FAMILIES)])
def test_a_keras_hub_backbone_loses_half_its_units_and_keeps_its_class(
        name, tmp_path):
    _, _, lm_class, heads_go = FAMILIES[name]
    model = backbone(name)
    groups = keras_lk.unit_groups(model)
    kinds = {g.kind for g in groups if g.removable}
    assert "units" in kinds, [(g.name, g.reasons) for g in groups]
    assert ("heads" in kinds) == heads_go, name
    x = inputs_of(model)
    keras_lk.prune_units(model, 0.5)
    before = model(x)
    tokens = greedy(lm_class, model) if lm_class else None
    small = keras_lk.shrink(model)
    assert type(small) is type(model)
    assert gap(before, small(x)) < 1e-5
    assert core_parameters(small) <= 0.75 * core_parameters(model)
    path = os.path.join(tmp_path, "small.keras")
    small.save(path)
    loaded = keras.saving.load_model(path)
    assert type(loaded) is type(model)
    assert gap(before, loaded(x)) < 1e-5
    small.save_to_preset(os.path.join(tmp_path, "preset"))
    preset = type(model).from_preset(os.path.join(tmp_path, "preset"))
    assert gap(before, preset(x)) < 1e-5
    if lm_class:
        assert np.array_equal(greedy(lm_class, small), tokens)
        assert np.array_equal(greedy(lm_class, preset), tokens)


@pytest.mark.parametrize("name", [
    "llama", "vit", pytest.param("gemma", marks=pytest.mark.slow),
    pytest.param("gpt2", marks=pytest.mark.slow)])
def test_whole_blocks_go_and_num_layers_drops(name):
    model = backbone(name)
    x = inputs_of(model)
    removed = keras_lk.prune_units(model, 0.0, blocks=0.5, data=x)
    assert len(removed["blocks"]) == 1
    small = keras_lk.shrink(model)
    assert type(small) is type(model)
    assert small.get_config()["num_layers"] == 1
    assert gap(model(x), small(x)) < 1e-5


def test_a_causal_lm_shrinks_as_a_causal_lm_and_generates_the_same():
    model = backbone("mistral")
    lm = keras_hub.models.MistralCausalLM(backbone=model, preprocessor=None)
    keras_lk.prune_units(model, 0.5, blocks=0.5)
    tokens = greedy("MistralCausalLM", model)
    small = keras_lk.shrink(lm)
    assert isinstance(small, keras_hub.models.MistralCausalLM)
    assert small.backbone.get_config()["num_layers"] == 1
    assert np.array_equal(greedy("MistralCausalLM", small.backbone), tokens)


def test_widths_that_differ_per_block_keep_the_widest_and_the_class():
    """A backbone's config has one intermediate_dim: where blocks lost
    different numbers of units, each keeps the widest block's width (the
    extra units zero), with a warning; the model is exact and generates."""
    model = backbone("llama")
    ffn = [g for g in keras_lk.unit_groups(model) if g.name.endswith("ffn")]
    keras_lk.prune_units(model, 0.75)
    first = ffn[0]
    kernel = model.get_layer(first.layers[0]).weights
    gate = [v for v in kernel if "gate" in v.path][0]
    value = np.array(gate.numpy())
    live = np.flatnonzero(np.abs(value).sum(0))
    # Bring back two units of the first block: it is now the widest.
    dead = [u for u in range(value.shape[1]) if u not in live][:2]
    value[:, dead] = 0.01
    gate.assign(value)
    x = inputs_of(model)
    tokens = greedy("LlamaCausalLM", model)
    with pytest.warns(UserWarning, match="kept .* zero units"):
        small = keras_lk.shrink(model)
    assert isinstance(small, keras_hub.models.LlamaBackbone)
    assert small.get_config()["intermediate_dim"] == 64 // 4 + 2
    assert gap(model(x), small(x)) < 1e-5
    assert np.array_equal(greedy("LlamaCausalLM", small), tokens)


def test_taylor_and_activation_scores_read_data():
    model = backbone("llama")
    lm = keras_hub.models.LlamaCausalLM(backbone=model, preprocessor=None)
    lm.compile(loss=keras.losses.SparseCategoricalCrossentropy(
        from_logits=True))
    x = inputs_of(model)
    y = np.roll(x["token_ids"], -1, axis=1)
    norms = {g.name: g.norms() for g in keras_lk.unit_groups(lm)}
    taylor = keras_lk.prune_units(lm, 0.5, score="taylor", data=(x, y))
    assert set(taylor) >= {"llama_backbone/transformer_layer_0/ffn"}
    assert all(len(units) == 32 for name, units in taylor.items()
               if name.endswith("ffn"))
    # The Taylor ranking is not the magnitude ranking.
    name = "llama_backbone/transformer_layer_0/ffn"
    by_norm = tuple(sorted(np.argsort(norms[name], kind="stable")[:32]))
    assert taylor[name] != by_norm
    fresh = backbone("llama", seed=1)
    activation = keras_lk.prune_units(fresh, 0.5, score="activation", data=x)
    assert all(len(u) == 32 for n, u in activation.items()
               if n.endswith("ffn"))


def test_what_a_class_cannot_say_is_named():
    bert = backbone("bert")
    reasons = {g.name: g.reasons for g in keras_lk.unit_groups(bert)}
    assert "derives the head size from hidden_dim // num_heads" in " ".join(
        reasons["transformer_layer_0/heads"])
    assert "never the identity" in " ".join(reasons["token_embedding"])
    with pytest.raises(ValueError, match="found no blocks that can go whole"):
        keras_lk.prune_units(bert, 0.5, blocks=0.5)
    llama = backbone("llama")
    reasons = {g.name: g.reasons for g in keras_lk.unit_groups(llama)}
    assert ("LlamaTransformerDecoder derives the head size from hidden_dim "
            "// num_query_heads") in reasons["transformer_layer_0/heads"][0]
    with pytest.raises(ValueError, match="score='taylor' takes the gradient"):
        keras_lk.prune_units(llama, 0.5, score="taylor", data=(
            inputs_of(llama), np.zeros((2, 8))))
    with pytest.raises(ValueError, match="reads data"):
        keras_lk.prune_units(llama, 0.5, score="activation")


def _forgetful(skip):
    """The shipped Llama rule with one of its slices left out."""
    from keras_lk.structure import hub

    def rule(layer, units):
        original = units.slice

        def slice_(channels, variable, axis, width=1):
            if variable is not None and skip(variable, width):
                return
            return original(channels, variable, axis, width)
        units.slice = slice_
        return hub.llama_block(layer, units)
    return rule


@pytest.mark.parametrize("skip", [
    lambda variable, width: "gate" in variable.path,
    lambda variable, width: "query" in variable.path and width > 1],
    ids=["the gate forgotten", "the KV grouping forgotten"])
def test_a_broken_rule_is_caught(skip):
    """Each rule's slices are needed: a rule that forgets the gate's
    columns, or that a KV head's query heads go with it, does not give
    the same model (shrink refuses, or the outputs differ)."""
    from keras_lk.structure import describe
    cls = keras_hub.models.MistralBackbone
    model = backbone("mistral")
    block = type(model.get_layer("transformer_layer_0"))
    keras_lk.unit_rule(block)(_forgetful(skip))
    try:
        x = inputs_of(model)
        keras_lk.prune_units(model, 0.5)
        before = model(x)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                small = keras_lk.shrink(model)
            except ValueError as error:
                assert "shape" in str(error) or "variables" in str(error)
                return
        assert not (isinstance(small, cls) and gap(before, small(x)) < 1e-5)
    finally:
        describe._BY_CLASS.pop(block)


def test_a_custom_block_made_removable_with_unit_rule(tmp_path):
    @keras.saving.register_keras_serializable("test_hub")
    class Residual(keras.layers.Layer):
        def __init__(self, hidden, **kwargs):
            super().__init__(**kwargs)
            self.hidden = hidden

        def build(self, shape):
            self.up = keras.layers.Dense(self.hidden, "relu", name="up")
            self.up.build(shape)
            self.down = keras.layers.Dense(shape[-1], name="down")
            self.down.build(tuple(shape[:-1]) + (self.hidden,))

        def call(self, x):
            return x + self.down(self.up(x))

        def get_config(self):
            return {**super().get_config(), "hidden": self.hidden}

    @keras_lk.unit_rule(Residual)
    def residual(layer, units):
        x = units.inputs[0]
        hidden = units.new(layer.hidden, "hidden", config="hidden")
        block = units.block([layer.down.kernel, layer.down.bias])
        assert block is not None
        units.slice(x, layer.up.kernel, 0)
        units.slice(hidden, layer.up.kernel, 1)
        units.slice(hidden, layer.up.bias, 0)
        units.slice(hidden, layer.down.kernel, 0)
        units.slice(x, layer.down.kernel, 1)
        units.slice(x, layer.down.bias, 0)
        return x

    inputs = keras.Input((8,))
    h = Residual(32, name="one")(inputs)
    h = Residual(32, name="two")(h)
    model = keras.Model(inputs, keras.layers.Dense(3, name="head")(h))
    groups = {g.name: g for g in keras_lk.unit_groups(model)}
    assert groups["one/hidden"].removable and groups["blocks"].removable
    x = np.random.default_rng(0).normal(size=(4, 8)).astype("float32")
    keras_lk.prune_units(model, 0.5, blocks=0.5)
    small = keras_lk.shrink(model)
    assert len([layer for layer in small.layers
                if isinstance(layer, Residual)]) == 1
    kept = [layer for layer in small.layers if isinstance(layer, Residual)]
    assert kept[0].hidden == 16
    assert gap(model(x), small(x)) < 1e-5
    path = os.path.join(tmp_path, "custom.keras")
    small.save(path)
    assert gap(model(x), keras.saving.load_model(path)(x)) < 1e-5


def test_a_causal_lm_trains_toward_half_its_units_watched_per_block(
        tmp_path):
    """attach(structure="units"), SparsityTarget and LkMonitor(units=True)
    on a keras_hub CausalLM: the heads and feed-forward units of each block
    reach the target, the cards show them and the blocks per block, and
    strip(shrink=True) gives a CausalLM of the same class."""
    import events
    model = backbone("mistral")
    lm = keras_hub.models.MistralCausalLM(backbone=model, preprocessor=None)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        keras_lk.attach(lm, keras_lk.LkRegularizer(0, 1e-3, proximal=True),
                        structure="units")
    lm.compile(keras_lk.ProximalOptimizer(keras.optimizers.Adam(1e-3)),
               keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    tokens = np.random.default_rng(0).integers(0, 50, (64, 9)).astype(
        "int32")
    x = {"token_ids": tokens[:, :-1], "padding_mask": np.ones((64, 8),
                                                              "int32")}
    lm.fit(x, tokens[:, 1:], epochs=3, batch_size=16, verbose=0, callbacks=[
        keras_lk.SparsityTarget(0.5, structure="units", log_dir=tmp_path),
        keras_lk.LkMonitor(tmp_path, units=True)])
    live = {g.name: g.live() for g in keras_lk.unit_groups(lm)
            if g.removable}
    assert live["mistral_backbone/transformer_layer_0/ffn"] == 32
    assert live["mistral_backbone/transformer_layer_1/heads"] == 1
    seen = events.tags(events.read(tmp_path), "train")
    for tag in ("live_units/mistral_backbone/transformer_layer_0/ffn",
                "live_units/mistral_backbone/transformer_layer_1/heads",
                "live_units/blocks", "live_macs_fraction/(all layers)"):
        assert tag in seen, tag
    small = keras_lk.strip(lm, shrink=True)
    assert isinstance(small, keras_hub.models.MistralCausalLM)
    assert small.backbone.get_config()["intermediate_dim"] == 32
    x8 = {k: v[:2] for k, v in x.items()}
    assert gap(lm(x8), small(x8)) < 1e-5


def test_bad_inputs_name_what_was_wrong():
    with pytest.raises(ValueError, match="layer_class"):
        keras_lk.unit_rule("Dense")
    with pytest.raises(ValueError, match="rule"):
        keras_lk.unit_rule(keras.layers.Dense)(42)
    model = backbone("llama")
    with pytest.raises(ValueError, match="allocation"):
        keras_lk.prune_units(model, 0.5, allocation="per_block")
    with pytest.raises(ValueError, match="blocks"):
        keras_lk.prune_units(model, 0.5, blocks=1.0)
    with pytest.raises(ValueError, match="score"):
        keras_lk.prune_units(model, 0.5, score="wanda")
    with pytest.raises(ValueError, match=r"\(x, y\) pairs"):
        lm = keras_hub.models.LlamaCausalLM(backbone=model,
                                            preprocessor=None)
        lm.compile(loss="sparse_categorical_crossentropy")
        keras_lk.prune_units(lm, 0.5, score="taylor", data=[1, 2, 3])


def test_a_global_allocation_ranks_across_blocks_and_still_shrinks():
    model = backbone("gemma")
    x = inputs_of(model)
    removed = keras_lk.prune_units(model, 0.5, score="lamp",
                                   allocation="global")
    sizes = {name: len(units) for name, units in removed.items()}
    total = sum(g.size for g in keras_lk.unit_groups(model)
                if g.removable and g.kind != "blocks")
    assert sum(sizes.values()) == total // 2
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        small = keras_lk.shrink(model)
    assert type(small) is type(model)
    assert gap(model(x), small(x)) < 1e-5


@pytest.mark.parametrize("name", ["vit", "gpt_neox", "qwen3"])
def test_with_nothing_removed_shrink_is_a_copy_of_the_same_class(name):
    model = backbone(name)
    x = inputs_of(model)
    small = keras_lk.shrink(model)
    assert type(small) is type(model) and small is not model
    assert gap(model(x), small(x)) == 0.0


def test_blocks_built_by_their_index_do_not_go_whole():
    """Gemma 3 makes every sixth block global: removing the first block
    would turn the last one local, a different model, so shrink refuses."""
    keras.utils.set_random_seed(0)
    model = keras_hub.models.Gemma3Backbone(**dict(
        FAMILIES["gemma3"][1], num_layers=6,
        use_sliding_window_attention=True))
    keras_lk.prune_units(model, 0.0, blocks=0.2)
    with pytest.raises(ValueError, match="built by their index"):
        keras_lk.shrink(model)
