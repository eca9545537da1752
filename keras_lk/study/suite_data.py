"""The sparsity suite's data, made with numpy or shipped with scikit-learn.

No Keras here: the tfmot peer (`benchmarks/tfmot_peer.py`, run in an
environment with tf-keras) loads this file directly to train on exactly the
same data.
"""

import numpy as np


def fixed_order(x, y, seed, epochs):
    """`(x, y)` for `epochs` epochs laid end to end, each in its own order
    drawn with numpy from `seed`: fit once on them (`epochs=1`,
    `shuffle=False`) and every framework sees the same batches in the same
    order, where each one's own shuffling would differ.

    Examples:

        >>> x, y = fixed_order(np.arange(3), np.arange(3), seed=0, epochs=2)
        >>> len(x), sorted(x[:3].tolist())
        (6, [0, 1, 2])
    """
    rng = np.random.default_rng(2000 + seed)
    order = np.concatenate([rng.permutation(len(x)) for _ in range(epochs)])
    return x[order], y[order]


def load_digits(seed):
    """Digits scaled to [0, 1], split 70/30: `(x_train, y_train, x_test,
    y_test)`."""
    from sklearn.datasets import load_digits as sklearn_digits
    from sklearn.model_selection import train_test_split

    images, labels = sklearn_digits(return_X_y=True)
    images = (images / 16.0).astype("float32")
    x_train, x_test, y_train, y_test = train_test_split(
        images, labels, test_size=0.3, random_state=seed, stratify=labels)
    return x_train, y_train, x_test, y_test


def teacher_data(seed):
    """3 classes from a random tanh teacher, 15% of labels redrawn."""
    rng = np.random.default_rng(1000 + seed)
    x = rng.normal(size=(3000, 20)).astype("float32")
    teacher = np.random.default_rng(7)   # one task; the seed splits data
    w1 = teacher.normal(size=(20, 16)) / np.sqrt(20)
    w2 = teacher.normal(size=(16, 3)) * 2
    y = np.argmax(np.tanh(x @ w1 * 2) @ w2, axis=1)
    noisy = rng.random(len(y)) < 0.15
    y[noisy] = rng.integers(0, 3, size=int(noisy.sum()))
    return x[:2000], y[:2000], x[2000:], y[2000:]


def digit_images(seed):
    x_train, y_train, x_test, y_test = load_digits(seed)
    return (x_train.reshape(-1, 8, 8, 1), y_train,
            x_test.reshape(-1, 8, 8, 1), y_test)


VOCAB = 500
LENGTH = 24


def token_counts_data(seed):
    """Class 1 when tokens 0-24 occur more often than tokens 25-49."""
    rng = np.random.default_rng(2000 + seed)
    x = rng.integers(0, VOCAB, size=(4000, LENGTH)).astype("int32")
    a = np.sum(x < 25, axis=1)
    b = np.sum((x >= 25) & (x < 50), axis=1)
    y = (a > b).astype("int64")
    ties = a == b
    y[ties] = rng.integers(0, 2, size=int(ties.sum()))
    return x[:3000], y[:3000], x[3000:], y[3000:]


SEQUENCE = 16
TOKENS = 50


def order_data(seed):
    """6 classes: the order in which tokens 1, 2 and 3 (once each) occur."""
    rng = np.random.default_rng(3000 + seed)
    n = 4000
    x = rng.integers(4, TOKENS, size=(n, SEQUENCE)).astype("int32")
    positions = np.argsort(rng.random((n, SEQUENCE)), axis=1)[:, :3]
    rows = np.arange(n)
    for token in range(3):
        x[rows, positions[:, token]] = token + 1
    # The permutation that sorts the positions, as a class index 0-5.
    order = np.argsort(positions, axis=1)
    codes = {tuple(p): i for i, p in enumerate(
        [(0, 1, 2), (0, 2, 1), (1, 0, 2), (1, 2, 0), (2, 0, 1), (2, 1, 0)])}
    y = np.array([codes[tuple(o)] for o in order], "int64")
    return x[:3000], y[:3000], x[3000:], y[3000:]
