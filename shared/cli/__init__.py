"""The ``ner`` command: the only code that names the deployables (gateway, worker, trainer).

Modules: ``main`` (the parser and the process commands: up, serve, worker, trainer, beat,
flower, db), ``train`` (``ner train``), ``keys`` (``ner keys`` and the local admin key),
``stack`` (running ``ner up``'s children), ``embedded_redis`` (a private Redis for ``ner up``).
"""

from shared.cli.main import build_parser, main

__all__ = ["build_parser", "main"]
