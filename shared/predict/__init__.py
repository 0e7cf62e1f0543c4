"""Synchronous entity recognition: the engine, which model answers, and batching of requests.

Modules: ``engine/`` (the in-process model: tokenisation, windows, spans; torch is imported
only here, lazily), ``serving`` (which version answers, loaded off the request path and hot
swapped), ``batcher`` (the asyncio micro-batcher in front of the engine), ``limits`` (the size
checks of a request), ``casing`` (the word-case feature of uncased encoders), ``options`` (what a
caller chooses about the entities: offset units, types, score thresholds), ``redact`` (entities
replaced by a mask, their type or a keyed hash), ``schemas`` (the HTTP shapes, including the one
``Entity``), ``errors`` (each with its HTTP status).
"""
