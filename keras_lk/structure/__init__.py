"""Structure: the units a model can lose, and the smaller model without them.

- `graph.py`: the call graph, read from a Functional model's config;
- `channels.py`: channel spaces (the union-find of coupled units) and the
  weight slices of each unit;
- `rules.py`: what each kind of layer does to the channels;
- `describe.py`: `unit_rule` and `LayerUnits`, the public way to describe
  a custom layer's units, and the registry of such rules;
- `hub.py`: the rules for keras_hub's Transformer blocks, embeddings and
  norms, written with `describe.py`;
- `scores.py`: the scores `prune_units` ranks units by;
- `analysis.py`: the pass over the graph that applies the rules;
- `groups.py`: `UnitGroup` and `unit_groups`;
- `records.py`: the slice records of the groups, for the group penalty;
- `prune.py`: `prune_units`;
- `surgery.py`: `shrink`;
- `macs.py`: multiply-accumulates, dense and live.

The group penalty and its step are `keras_lk/penalties/` (`group.py`,
`plan.py`, `prox.py`); training toward units is `keras_lk/sparsity/`.
"""

from keras_lk.penalties.group import GroupLkRegularizer
from keras_lk.penalties.prox import group_prox
from keras_lk.structure.describe import LayerUnits, unit_rule
from keras_lk.structure.groups import UnitGroup, unit_groups
from keras_lk.structure.macs import macs
from keras_lk.structure.prune import prune_units
from keras_lk.structure.surgery import shrink

__all__ = ["GroupLkRegularizer", "LayerUnits", "UnitGroup", "group_prox",
           "macs", "prune_units", "shrink", "unit_groups", "unit_rule"]
