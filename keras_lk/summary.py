"""TensorBoard writing: the one place that knows writers, tags and steps.

Histograms are written as the histogram plugin's `[k, 3]` tensor (left edge,
right edge, count) with its metadata, from counts made on the device; the
custom-scalars layout with the custom_scalar plugin's protobuf.
"""

import os
import tempfile

import numpy as np
import tensorflow as tf
from tensorboard.plugins.custom_scalar import layout_pb2
from tensorboard.plugins.custom_scalar import summary as custom_scalar_summary
from tensorboard.plugins.histogram import metadata as histogram_metadata


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


class RunWriter:
    """Writes to one TensorBoard run directory, opening the file lazily."""

    def __init__(self, run_dir):
        self.run_dir = str(run_dir)
        self._writer = None

    def _get(self):
        if self._writer is None:
            self._writer = tf.summary.create_file_writer(self.run_dir)
        return self._writer

    def scalars(self, values, step):
        """Writes `{tag: float}` at `step` and flushes."""
        if not values:
            return
        with self._get().as_default():
            for tag, value in values.items():
                tf.summary.scalar(tag, float(value), step=step)
        self._writer.flush()

    def histograms(self, buckets, step):
        """Writes `{tag: [k, 3] array}` at `step` and flushes."""
        if not buckets:
            return
        metadata = histogram_metadata.create_summary_metadata(
            display_name=None, description=None)
        with self._get().as_default():
            for tag, tensor in buckets.items():
                tf.summary.write(
                    tag, tf.constant(np.asarray(tensor, "float64")),
                    step=step, metadata=metadata.SerializeToString())
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
            tf.summary.experimental.write_raw_pb(summary.SerializeToString(),
                                                 step=0)
        self._writer.flush()

    def close(self):
        if self._writer is not None:
            self._writer.close()
            self._writer = None
