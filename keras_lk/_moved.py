"""The import paths of public names that moved when the package was split
into rooms, kept working.

A registry of module aliases in `sys.modules`: `import keras_lk.callbacks`
and `from keras_lk.regularizers import LkRegularizer` find the module that
now holds those names. It exists so that code written against the earlier
layout runs unchanged (`tests/test_public_api.py` imports every public
name from its old path).
"""

import importlib
import sys

MOVED = {
    "keras_lk.callbacks": "keras_lk.monitoring.callbacks",
    "keras_lk.optimizers": "keras_lk.penalties.optimizer",
    "keras_lk.proximal": "keras_lk.penalties.prox",
    "keras_lk.regularizers": "keras_lk.penalties.regularizers",
    "keras_lk.sparsity.shipping": "keras_lk.export",
    "keras_lk.structure.flops": "keras_lk.structure.macs",
    "keras_lk.structure.group_penalty": "keras_lk.penalties.group",
    "keras_lk.structure.group_prox": "keras_lk.penalties.prox",
}


def install():
    """Puts every old path in `sys.modules`, and on its parent package."""
    for old, new in MOVED.items():
        module = importlib.import_module(new)
        sys.modules.setdefault(old, module)
        parent, _, name = old.rpartition(".")
        if not hasattr(sys.modules[parent], name):
            setattr(sys.modules[parent], name, module)
