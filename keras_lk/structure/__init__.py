"""Structure: the units a model can lose, and the smaller model without them.

- `graph.py`: the call graph, read from a Functional model's config;
- `channels.py`: channel spaces (the union-find of coupled units) and the
  weight slices of each unit;
- `rules.py`: what each kind of layer does to the channels;
- `analysis.py`: the pass over the graph that applies the rules;
- `groups.py`: `UnitGroup` and `unit_groups`;
- `prune.py`: `prune_units`;
- `surgery.py`: `shrink`;
- `flops.py`: multiply-accumulates, dense and live;
- `group_prox.py`: the proximal step of `t * ||v||_2^k` on a group;
- `group_penalty.py`: `GroupLkRegularizer` (one variable's records) and
  `UnitPlan` (the groups, joined again from the records, and their step).

`SparsityTarget(structure="units")`'s control is `keras_lk/sparsity/units.py`.
"""

from keras_lk.structure.flops import macs
from keras_lk.structure.group_penalty import GroupLkRegularizer
from keras_lk.structure.group_prox import group_prox
from keras_lk.structure.groups import UnitGroup, unit_groups
from keras_lk.structure.prune import prune_units
from keras_lk.structure.surgery import shrink

__all__ = ["GroupLkRegularizer", "UnitGroup", "group_prox", "macs", "prune_units", "shrink", "unit_groups"]
