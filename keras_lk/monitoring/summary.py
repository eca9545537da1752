"""TensorBoard writing: the one place that knows writers, tags and steps.

Scalars and histograms are written as the scalar and histogram plugins'
tensor summaries (a histogram is the `[k, 3]` tensor of left edge, right
edge, count, from counts made on the device); the custom-scalars layout with
the custom_scalar plugin's protobuf.
"""

import os
import tempfile

import numpy as np
from tensorboard.compat.proto import summary_pb2
from tensorboard.plugins.custom_scalar import layout_pb2
from tensorboard.plugins.custom_scalar import summary as custom_scalar_summary
from tensorboard.plugins.histogram import metadata as histogram_metadata
from tensorboard.plugins.scalar import metadata as scalar_metadata
from tensorboard.util import tensor_util

_SCALAR_METADATA = scalar_metadata.create_summary_metadata(
    display_name="", description="")
_HISTOGRAM_METADATA = histogram_metadata.create_summary_metadata(
    display_name="", description="")


def check_writable(directory, what="TensorBoard logs", argument="log_dir"):
    """Creates `directory` and checks that files can be written in it.

    Raises:
        OSError: naming the directory and the reason, if it cannot be used.
    """
    try:
        os.makedirs(directory, exist_ok=True)
        with tempfile.TemporaryFile(dir=directory):
            pass
    except OSError as error:
        raise OSError(
            f"Cannot write {what} to {argument}={str(directory)!r}: "
            f"{error.strerror or error}") from error


def _tf_summary():
    """`tf.summary`, imported where the writing happens: `import keras_lk`
    does not import TensorFlow."""
    import tensorflow as tf

    return tf.summary


class RunWriter:
    """Writes to one TensorBoard run directory, opening the file lazily."""

    def __init__(self, run_dir):
        self.run_dir = str(run_dir)
        self._writer = None

    def _get(self):
        if self._writer is None:
            self._writer = _tf_summary().create_file_writer(self.run_dir)
        return self._writer

    def scalars(self, values, step):
        """Writes `{tag: float}` at `step` and flushes."""
        self._write(values, step, _SCALAR_METADATA, "float32")

    def histograms(self, buckets, step):
        """Writes `{tag: [k, 3] array}` at `step` and flushes."""
        self._write(buckets, step, _HISTOGRAM_METADATA, "float64")

    def _write(self, values, step, metadata, dtype):
        # One Summary protobuf for all tags, written by one op: the same
        # records as tf.summary.scalar / histogram, without an eager op per
        # tag (which cost more than the statistics themselves).
        if not values:
            return
        summary = summary_pb2.Summary()
        for tag, value in values.items():
            entry = summary.value.add(tag=tag)
            entry.metadata.CopyFrom(metadata)
            entry.tensor.CopyFrom(tensor_util.make_tensor_proto(
                np.asarray(value, dtype)))
        with self._get().as_default():
            _tf_summary().experimental.write_raw_pb(
                summary.SerializeToString(), step=step)
        self._writer.flush()

    def layout(self, charts):
        """Writes a custom-scalars layout: `{category: {title: [regex]}}`."""
        categories = [
            layout_pb2.Category(title=category, chart=[
                layout_pb2.Chart(
                    title=title,
                    multiline=layout_pb2.MultilineChartContent(
                        tag=list(regexes)))
                for title, regexes in chart_map.items()])
            for category, chart_map in charts.items()]
        summary = custom_scalar_summary.pb(
            layout_pb2.Layout(category=categories))
        with self._get().as_default():
            _tf_summary().experimental.write_raw_pb(
                summary.SerializeToString(), step=0)
        self._writer.flush()

    def close(self):
        if self._writer is not None:
            self._writer.close()
            self._writer = None
