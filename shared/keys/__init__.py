"""API keys: who may call what, and how often.

Modules: ``service`` (create, revoke, list, authenticate; keys stored as scrypt hashes),
``owner`` (whose jobs and runs a caller sees), ``ratelimit`` (a token bucket per key in Redis),
``errors`` (401, 403, 404, 429, each with its HTTP status and headers).
"""
