"""Bulk jobs: ingest documents, split them into chunks, run them on workers, serve the results.

Modules: ``ingest`` (stream parsers), ``store`` (batched document writes, chunk planning),
``service`` (submit, read, list, cancel), ``lifecycle`` (state transitions under the job's row
lock), ``results`` (pages, NDJSON, entity counts), ``cursors`` (keyset cursors), ``dispatch``
(sending chunk and callback tasks), ``processing`` (a chunk's idempotent body, written in slices),
``options`` (output choices and redaction applied to stored results), ``callbacks`` (signed
completion callbacks, retried and recorded), ``maintenance`` (watchdog and retention), ``schemas``
(the HTTP shapes), ``errors`` (each with its HTTP status).
"""
