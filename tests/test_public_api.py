import keras_lk


def test_public_names_are_pinned():
    assert sorted(keras_lk.__all__) == sorted([
        "AbsWeightHistograms",
        "LkMonitor",
        "RegularizationShare",
        "SparsityTarget",
        "ZeroCounts",
        "GroupLkRegularizer",
        "LkRegularizer",
        "ProximalOptimizer",
        "LayerUnits",
        "UnitGroup",
        "attach",
        "detach",
        "group_prox",
        "lk_penalty",
        "macs",
        "prox",
        "prune_units",
        "safe_abs_pow",
        "shrink",
        "sparsity",
        "strip",
        "unit_groups",
        "unit_rule",
    ])
    for name in keras_lk.__all__:
        assert getattr(keras_lk, name).__doc__, name


# Where each public name lived before the package was split into rooms
# (keras_lk/_moved.py keeps these paths working).
OLD_PATHS = {
    "keras_lk.attach": ["attach", "detach"],
    "keras_lk.callbacks": ["AbsWeightHistograms", "LkMonitor",
                           "RegularizationShare", "ZeroCounts"],
    "keras_lk.optimizers": ["ProximalOptimizer"],
    "keras_lk.penalties": ["lk_penalty", "safe_abs_pow"],
    "keras_lk.proximal": ["prox"],
    "keras_lk.regularizers": ["LkRegularizer"],
    "keras_lk.sparsity": ["SparsityTarget", "sparsity", "strip"],
    "keras_lk.sparsity.counting": ["sparsity"],
    "keras_lk.sparsity.shipping": ["strip"],
    "keras_lk.sparsity.target": ["SparsityTarget"],
    "keras_lk.structure": ["GroupLkRegularizer", "UnitGroup", "group_prox",
                           "macs", "prune_units", "shrink", "unit_groups"],
    "keras_lk.structure.flops": ["macs"],
    "keras_lk.structure.group_penalty": ["GroupLkRegularizer"],
    "keras_lk.structure.group_prox": ["group_prox"],
    "keras_lk.structure.groups": ["UnitGroup", "unit_groups"],
    "keras_lk.structure.prune": ["prune_units"],
    "keras_lk.structure.surgery": ["shrink"],
    # New since the split: their one home.
    "keras_lk.structure.describe": ["LayerUnits", "unit_rule"],
}


def test_the_old_import_paths_of_public_names_still_work():
    import importlib

    seen = set()
    for path, names in OLD_PATHS.items():
        module = importlib.import_module(path)
        for name in names:
            assert getattr(module, name) is getattr(keras_lk, name), (
                path, name)
            seen.add(name)
    assert seen == set(keras_lk.__all__)
    # The attribute path too, as `keras_lk.callbacks.LkMonitor`.
    assert keras_lk.callbacks.LkMonitor is keras_lk.LkMonitor
    assert keras_lk.regularizers.LkRegularizer is keras_lk.LkRegularizer


def test_keras_lk_does_not_import_tensorflow_on_another_backend():
    import os
    import subprocess
    import sys

    code = ("import sys, keras_lk; "
            "print('tensorflow' in sys.modules)")
    for backend in ("jax", "torch"):
        result = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True,
            env=dict(os.environ, KERAS_BACKEND=backend), check=True)
        assert result.stdout.strip().splitlines()[-1] == "False", backend
