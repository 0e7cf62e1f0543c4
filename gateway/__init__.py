"""The HTTP gateway: synchronous predict, bulk jobs, training runs, the model registry and the web UI.

Modules: ``app`` (the factory), ``deps`` (settings, sessions, API-key scopes), ``errors`` (the one
exception handler), ``prediction`` (model provider and micro-batcher in the lifespan),
``middleware`` (request ids, access log), ``metrics``, ``openapi``, ``routers/`` (one per resource).
"""
