"""Infrastructure every part uses; no domain logic and no web or queue handlers here.

Modules: ``config`` (the one settings class), ``db`` (engines and sessions), ``tables`` (the
SQLAlchemy tables), ``migrate`` (Alembic, the only owner of the schema), ``logging`` (JSON logs,
request ids, redaction), ``redis`` (pooled clients), ``metrics`` (Prometheus plumbing and the
workers' metrics), ``celery_app`` (the one Celery app, its queues and defaults),
``celery_signals`` (request ids and metrics around tasks), ``errors`` (the base of every
domain's errors, carrying its HTTP status).
"""
