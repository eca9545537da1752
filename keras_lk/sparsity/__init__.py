"""Sparsity in one place: counting exact zeros, the schedule, the
`SparsityTarget` controller (allocation, protection, lock) and `strip`.

- `shipping.py`: `exact_zeros` (the one zero count), `sparsity`, `strip`;
- `schedule.py`: the polynomial schedule shared by `SparsityTarget` and
  `keras-lk sweep`;
- `target.py`: `SparsityTarget` and its in-step controller.
"""

from keras_lk.sparsity.shipping import exact_zeros, sparsity, strip
from keras_lk.sparsity.target import SparsityTarget

__all__ = ["SparsityTarget", "exact_zeros", "sparsity", "strip"]
