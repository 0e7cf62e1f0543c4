"""The inference worker: Celery tasks that run the NER engine over bulk job documents."""
