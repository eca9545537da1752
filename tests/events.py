"""Reads TensorBoard event files back for the tests."""

import numpy as np
from tbparse import SummaryReader


def read(log_dir):
    """Returns `{(run, tag): {step: value}}` for scalars and histograms.

    Scalars come back as floats, histograms as `[k, 3]` arrays; runs are the
    subdirectories (`train`, `validation`).
    """
    reader = SummaryReader(str(log_dir), extra_columns={"dir_name"})
    frame = reader.tensors
    result = {}
    for row in frame.itertuples():
        value = np.asarray(row.value)
        if value.dtype.kind in "SUO":
            continue  # the custom-scalars layout, Keras's model graph
        value = float(value) if value.ndim == 0 else value
        result.setdefault((row.dir_name, row.tag), {})[int(row.step)] = value
    return result


def tags(events, run):
    return {tag for (r, tag) in events if r == run}
