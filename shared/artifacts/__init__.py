"""Where published model versions and training uploads live, so nodes need no shared disk.

``NER_ARTIFACTS_URL`` picks the store: ``local`` (a folder every node mounts, NER_ARTIFACTS_DIR;
versions are served from it in place), ``s3://bucket/prefix`` (any S3-compatible object store) or
``postgresql`` (chunked blobs in the service's own database). With a remote store every node keeps
a cache of verified copies keyed by the manifest's sha256 (``versions.fetch_version``).

Modules: ``store`` (the ``ObjectStore`` protocol, ``open_store``), ``local``, ``s3``, ``database``
(the three implementations), ``versions`` (publish a folder, fetch a version into the cache with
every file checked against its manifest), ``errors`` (each with its HTTP status).
"""
