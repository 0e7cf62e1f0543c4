"""The inference worker: Celery tasks that run the NER engine over bulk job documents.

Modules: ``tasks`` (``ner.jobs.process_chunk``, ``ner.jobs.purge_expired``: thin entries over
``shared.jobs``), ``runtime`` (per pool process: the model provider, the heartbeat supervisor).
"""
