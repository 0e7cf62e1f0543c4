"""The model registry: numbered versions of model folders, exactly one of them active.

Modules: ``service`` (read, register, activate, promote), ``publish`` (a finished model folder
becomes version N+1, atomically; ``publish_and_gate`` used by the trainer), ``gate`` (whether a
candidate may become active), ``manifest`` (the files of a version and their sha256, checked on
activation), ``notify`` (the "active version changed" message on Redis), ``schemas`` (the HTTP
shapes), ``errors`` (each with its HTTP status).
"""
