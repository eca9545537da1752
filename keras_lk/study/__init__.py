"""The `keras-lk` command's study of the article: runs, report, figures.

It is built on the library (`keras_lk`) and never the reverse: importing
`keras_lk` does not import this subpackage, matplotlib or scikit-learn.
Its plotting and data come with the `study` extra:

    pip install 'keras-lk[study]'

Modules: `cli` (the command), `runs` (the demo's data, model and settings),
`report` (reading runs back from event files; the table), `figures`
(the charts), `suite` and `suite_data` (the sweep's models and data),
`sweep` (unstructured sparsity against magnitude pruning), `structured`
(`sweep --structure units`) and `torch_peer` (Torch-Pruning, run live;
imported only when its methods run).
"""
