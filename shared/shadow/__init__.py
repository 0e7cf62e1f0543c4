"""Knowing what a new model version changes: shadow traffic, and job re-runs with a diff (issue 15).

Modules: ``sampler`` (the gateway's non-blocking sampler: a cached shadow configuration and a
bounded queue that a background thread sends to the ``shadow`` queue), ``compare`` (entity-level
agreement of two answers to one text, and the diff of two answers to one document), ``service``
(shadow configuration, recording comparisons as UPSERTed counters and bounded samples, reading them,
the retention purge), ``rerun`` (a new job over a job's stored documents, pinned to another version),
``diff`` (the documents whose entities differ between two runs of the same documents),
``schemas`` (the HTTP shapes), ``errors`` (each with its HTTP status).
"""
