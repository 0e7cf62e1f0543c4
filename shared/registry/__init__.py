"""The model registry: numbered versions of model folders, exactly one of them active.

Modules: ``service`` (read, register, activate - a lost race is a 409 -, promote, load errors),
``publish`` (a finished model folder becomes version N+1, atomically; ``publish_and_gate`` used by
the trainer), ``gate`` (whether a candidate may become active: scored against the active version on
the operator's gate set, with the trainer's engine scorer passed in), ``seed`` (``NER_MODEL`` or the
shipped default model as version 1 of an empty registry), ``importer`` (a model folder or Hub id
becomes a version: copied, checked by the caller's engine, gate-scored), ``manifest`` (the files
of a version and their sha256, checked on activation and again by every loader; safetensors only,
never pickle), ``notify`` (the "active version changed" message on Redis), ``schemas`` (the HTTP
shapes), ``errors`` (each with its HTTP status).
"""
