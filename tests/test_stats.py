import numpy as np
import pytest

from keras_lk.monitoring.stats import (histogram_buckets,
                                        log_histogram_buckets,
                                        weight_statistics)


def host(stats):
    return {key: np.asarray(value) for key, value in stats.items()}


@pytest.mark.parametrize("dtype", ["float32", "float64", "float16"])
def test_counts_and_histograms_match_numpy(dtype):
    rng = np.random.default_rng(0)
    w = (rng.standard_normal(5000) * rng.choice([1, 1e-4], 5000)).astype(dtype)
    w[:300] = 0
    stats = host(weight_statistics(w, tol=1e-3, buckets=25))
    magnitude = np.abs(w.astype("float64"))
    assert stats["size"] == 5000
    assert stats["exact_zeros"] == 300
    assert stats["near_zeros"] == np.sum(magnitude <= np.float32(1e-3))
    assert stats["max_abs"] == pytest.approx(magnitude.max(), rel=1e-6)
    assert stats["abs_counts"].sum() == 5000
    assert stats["log_counts"].sum() == 5000
    assert stats["log_counts"][0] == 300
    expected, _ = np.histogram(np.log10(magnitude[magnitude > 0]),
                               bins=np.linspace(stats["log_lo"],
                                                stats["log_hi"], 26))
    np.testing.assert_array_equal(stats["log_counts"][1:], expected)


def test_nan_and_inf_are_counted_apart_from_zeros():
    w = np.array([np.nan, np.inf, -np.inf, 0.0, 0.5, -2.0, 1e-5], "float32")
    stats = host(weight_statistics(w, tol=1e-3, buckets=10))
    assert (stats["nan"], stats["inf"]) == (1, 2)
    assert stats["exact_zeros"] == 1
    assert stats["near_zeros"] == 2
    assert stats["max_abs"] == 2.0
    assert stats["abs_counts"].sum() == 4
    assert stats["log_counts"].sum() == 4 and stats["log_counts"][0] == 1


def test_all_zero_and_tiny_weights_stay_finite():
    stats = host(weight_statistics(np.zeros(10, "float32"), tol=0.0))
    assert stats["exact_zeros"] == 10 and stats["near_zeros"] == 10
    assert stats["abs_counts"][0] == 10 and stats["log_counts"][0] == 10
    tiny = np.array([0.0, 2e-38, 1e-38], "float32")
    stats = host(weight_statistics(tiny, tol=0.0, buckets=4))
    assert stats["abs_counts"].sum() == 3 and stats["log_counts"].sum() == 3
    assert np.isfinite(stats["log_lo"]) and np.isfinite(stats["log_hi"])


def test_relative_tolerance_scales_with_max():
    w = np.array([0.0, 0.01, 0.5, 10.0], "float32")
    assert int(weight_statistics(w, 0.1, relative=True)["near_zeros"]) == 3
    assert int(weight_statistics(w, 0.1)["near_zeros"]) == 2


def test_log_range_spans_at_most_twelve_decades():
    w = np.array([1e-30, 1e-3, 1.0], "float32")
    stats = host(weight_statistics(w, tol=0.0, buckets=12))
    assert stats["log_hi"] - stats["log_lo"] == 12
    assert stats["log_counts"][1] == 1  # 1e-30 falls into the lowest bucket


def test_single_bucket():
    stats = host(weight_statistics(np.array([0.0, 1.0, 2.0]), 0.0, buckets=1))
    assert stats["abs_counts"].tolist() == [3]
    assert stats["log_counts"].tolist() == [1, 2]


def test_bucket_tables():
    table = histogram_buckets([1, 2, 3], 0.0, 3.0)
    assert table.tolist() == [[0, 1, 1], [1, 2, 2], [2, 3, 3]]
    logs = log_histogram_buckets([4, 1, 1], -2.0, 0.0)
    assert logs.tolist() == [[-3, -2, 4], [-2, -1, 1], [-1, 0, 1]]


@pytest.mark.parametrize("relative", [False, True])
def test_blocks_give_bit_identical_results(relative):
    # Larger than several blocks, not a multiple of the block size, with
    # zeros, tiny and non-finite weights spread over different blocks.
    rng = np.random.default_rng(3)
    w = (rng.standard_normal(3001) * rng.choice([1, 1e-5], 3001)).astype(
        "float32")
    w[::7] = 0
    whole = host(weight_statistics(w, 1e-3, relative, buckets=16,
                                   block=10**6))
    for block in (7, 256, 1000, 3000):
        blocked = host(weight_statistics(w, 1e-3, relative, buckets=16,
                                         block=block))
        for key, value in whole.items():
            np.testing.assert_array_equal(blocked[key], value, err_msg=key)
    w[[5, 900, 2999]] = [np.nan, np.inf, -np.inf]
    whole = host(weight_statistics(w, 1e-3, relative, buckets=16,
                                   block=10**6))
    blocked = host(weight_statistics(w, 1e-3, relative, buckets=16,
                                     block=256))
    for key, value in whole.items():
        np.testing.assert_array_equal(blocked[key], value, err_msg=key)
    assert (blocked["nan"], blocked["inf"]) == (1, 2)
    assert blocked["abs_counts"].sum() == 3001 - 3


@pytest.mark.parametrize("relative", [False, True])
@pytest.mark.parametrize("nonfinite", [False, True])
def test_the_fused_pass_gives_exactly_the_unfused_arrays(relative, nonfinite):
    # The monitors fuse each full block's elementwise work with XLA (only
    # weights above a block, 2^19 elements, take that path in a fit): with
    # a small block, the fused pass runs here on every full block and must
    # give the arrays of one unfused pass over the whole weight.
    from keras_lk.monitoring.measures.weights import _fuse
    rng = np.random.default_rng(11)
    w = (rng.standard_normal(5000) * rng.choice([1, 1e-3, 1e-7], 5000)
         ).astype("float32")
    w[::9] = 0
    if nonfinite:
        w[[17, 2100, 4999]] = [np.nan, np.inf, -np.inf]
    whole = host(weight_statistics(w, 1e-3, relative, buckets=20,
                                   block=10**6))
    for block in (256, 1024, 5000):
        fused = host(weight_statistics(w, 1e-3, relative, buckets=20,
                                       block=block, fuse=_fuse))
        assert fused.keys() == whole.keys()
        for key, value in whole.items():
            np.testing.assert_array_equal(fused[key], value,
                                          err_msg=f"{key}, block {block}")
    magnitude = np.abs(w[np.isfinite(w)])
    assert whole["exact_zeros"] == np.sum(magnitude == 0)
    assert whole["max_abs"] == magnitude.max()


@pytest.mark.slow
def test_the_packed_pass_gives_exactly_the_per_weight_statistics():
    # Many weights in one pass (rows of 1024, padded; blocks of rows, one
    # compiled step): to the bit what weight_statistics gives each one,
    # all finite or with NaN and inf, all-zero, empty and block-crossing
    # weights (and blocks holding many weights), absolute
    # and relative tolerances, when both run the same arithmetic (both
    # XLA-compiled, or neither: XLA's log10 may differ from TensorFlow's in
    # the last bit, moving a weight on a bucket edge to the next bucket).
    import tensorflow as tf
    from keras_lk.monitoring.measures.weights import _fuse
    from keras_lk.monitoring.packed_stats import packed_statistics, unstack
    rng = np.random.default_rng(0)
    tensors = [rng.normal(size=shape).astype("float32") * scale
               for shape, scale in [((3, 4), 1.0), ((100,), 1e-3), ((0,), 1),
                                    ((50, 70), 10.0), ((2048,), 1e-6),
                                    ((1024,), 0.0), ((700, 800), 0.1)]]
    tensors[0][0, 0] = 0.0
    tensors[1][3] = np.nan
    tensors[3][1, 1], tensors[3][2, 2], tensors[3][3, 3] = np.inf, 0, -np.inf
    # Compiled: sizes in whole rows, so the per-weight pass (blocks of
    # 1024) compiles every element too.
    whole = [rng.normal(size=shape).astype("float32") * 0.1
             for shape in [(1024,), (512, 6), (700, 1024)]]
    whole[1][0, 0] = np.inf
    fused = lambda f: tf.function(f, jit_compile=True,  # noqa: E731
                                  autograph=False)
    # All finite: the plain pass (no sanitizing) runs instead.
    finite = lambda group: [np.where(np.isfinite(t), t, 0.5)  # noqa: E731
                            for t in group]
    compiled = {"block": 1024, "fuse": _fuse}
    for relative in (False, True):
        for group, fuse, per_weight in ((tensors, None, {}),
                                        (finite(tensors), None, {}),
                                        (whole, fused, compiled),
                                        (finite(whole), fused, compiled)):
            stacked = packed_statistics(group, 1e-3, relative, fuse=fuse)
            packed = unstack({k: np.asarray(v) for k, v in stacked.items()})
            assert len(packed) == len(group)
            for tensor, got in zip(group, packed):
                expected = weight_statistics(tensor, 1e-3, relative,
                                             **per_weight)
                for key, value in expected.items():
                    np.testing.assert_array_equal(
                        got[key], np.asarray(value), f"{key} {tensor.shape}")


def test_packs_are_bounded_and_large_weights_go_alone():
    from keras_lk.monitoring.packed_stats import (PACK, PACK_TENSORS,
                                                  PACK_WEIGHT, ROW, packs)
    sizes = [PACK_WEIGHT, PACK_WEIGHT + 1, 10, PACK_WEIGHT, PACK_WEIGHT,
             PACK_WEIGHT, 5]
    groups = packs(sizes)
    assert [1] in groups
    assert sorted(i for g in groups for i in g) == list(range(len(sizes)))
    for group in groups:
        if group != [1]:
            assert sum(sizes[i] for i in group) <= PACK
    # Many small weights: each takes whole rows in the pack (padding
    # counts), and a pack holds at most PACK_TENSORS of them.
    sizes = ([1] * (3 * PACK_TENSORS + 1) + [0] + [ROW + 1] * 9000
             + [16 * ROW + 1] * 2000)
    groups = packs(sizes)
    assert [i for g in groups for i in g] == list(range(len(sizes)))
    for group in groups:
        assert len(group) <= PACK_TENSORS
        assert sum(max(1, -(-sizes[i] // ROW)) * ROW for i in group) <= PACK
    assert [len(g) for g in groups[:4]] == [PACK_TENSORS] * 3 + [
        PACK_TENSORS]
