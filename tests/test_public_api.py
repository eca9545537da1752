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
    ])
    for name in keras_lk.__all__:
        assert getattr(keras_lk, name).__doc__, name
