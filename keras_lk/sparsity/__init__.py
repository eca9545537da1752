"""Sparsity in one place, one concept a file:

- `counting.py`: `exact_zeros` (the one zero count) and `sparsity`;
- `shipping.py`: `strip`;
- `schedule.py`: the polynomial schedule shared by `SparsityTarget` and
  `keras-lk sweep`;
- `groups.py`: the weights covered, and how they are allocated to groups;
- `protection.py`: the weights never zeroed, so that no layer collapses;
- `lock.py`: the exact pattern fixed at `end_step`;
- `state.py`: the state the optimizer keeps, with named fields;
- `controller.py`: the control law, run inside the train step;
- `units.py`: `SparsityTarget(structure="units")`: whole units steered in
  the step (every group the same fraction), and their state;
- `unit_ranking.py`: units ranked across groups (allocation "global" and
  "adaptive");
- `unit_run.py`: the host side of a units run, and `uniform_fraction` for
  a MACs target;
- `target.py`: the `SparsityTarget` callback.
"""

from keras_lk.sparsity.counting import exact_zeros, sparsity
from keras_lk.sparsity.shipping import strip
from keras_lk.sparsity.target import SparsityTarget

__all__ = ["SparsityTarget", "exact_zeros", "sparsity", "strip"]
