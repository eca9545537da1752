"""Monitoring: what the callbacks measure during `fit` and how it reaches
TensorBoard and the `logs` dict.

- `callbacks.py`: the public callbacks (`LkMonitor` and its parts);
- `lifecycle.py`: the fit every monitoring callback shares
  (`MeasuringCallback`): windows of steps, measures, writing;
- `recording.py` and `sinks.py`: the per-step recorders and where they
  accumulate;
- `stats.py` and `packed_stats.py`: the statistics of one weight, and of
  many in one pass;
- `measures/`: what is measured (weights, the penalty, live units);
- `summary.py`: TensorBoard writing (TensorFlow imported where it writes);
- `tags.py`: the names written.
"""
