"""The training worker: what needs torch to train a model.

Modules: ``conll`` and ``data`` (readers, label lists, data hashes), ``encoding`` (labels aligned
to sub-tokens), ``losses``, ``model`` (the starting point), ``training`` (the loop, checkpoints,
resume), ``metrics`` (seqeval scores and tables), ``card`` (metrics.json, the model card, the
registry candidate), ``pipeline`` (``run_pipeline``: data to model folder, for ``ner train`` and
the task), ``runs`` (a queued run on a worker: lease, train, publish and gate), ``tasks`` (the
Celery task ``ner.train.run``).
"""
