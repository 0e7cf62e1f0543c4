"""The inference worker: Celery tasks that run the NER engine over bulk job documents.

Modules: ``tasks`` (``ner.jobs.process_chunk``, ``ner.jobs.purge_expired``: thin entries over
``shared.jobs``; a dead pool child's chunk is sent again at once), ``runtime`` (per pool process:
the model provider, the heartbeat supervisor), ``beat`` (the one beat scheduler: a Redis lock, and
no orphan when its worker dies).
"""
