"""The protocols other tools already speak, mapped onto this service's own domains.

Modules: ``hf`` (the Hugging Face Inference API shape of token classification), ``kserve`` (the
Open Inference Protocol, KServe V2 REST, with Triton's binary tensor extension), ``labelstudio``
(Label Studio's ML backend: tasks in, ``labels`` regions out, retraining from its annotations),
``errors`` (each with its HTTP status). No FastAPI here: the gateway's routers are thin over these.
"""
