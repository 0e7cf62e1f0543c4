"""The engine's errors, importable without torch (the gateway catches them before any model loads)."""


class ModelLoadError(RuntimeError):
    """A model folder or hub id that cannot be served; the message says what is wrong."""
