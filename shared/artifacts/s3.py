"""The S3-compatible store (``NER_ARTIFACTS_URL=s3://bucket/prefix``): AWS S3, MinIO, R2, GCS (XML API).

boto3 does the protocol (signing, multipart uploads of large files, retries); this maps its
errors to ours, so a caller sees 503 for an unreachable store and 409 for a missing object.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from shared.artifacts.errors import ArtifactError, ArtifactMissing, ArtifactUnavailable
from shared.artifacts.store import check_key
from shared.core.config import Settings

_MISSING_CODES = {"404", "NoSuchKey", "NotFound"}


class S3Store:
    """Objects under ``s3://bucket/prefix/``; one boto3 client per store (thread-safe)."""

    def __init__(self, *, bucket: str, prefix: str, client_options: dict[str, Any]) -> None:
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.url = f"s3://{bucket}/{self.prefix + '/' if self.prefix else ''}"
        self._options = client_options
        self._client: Any = None
        self._pid = os.getpid()
        self._lock = threading.Lock()

    @classmethod
    def from_settings(cls, settings: Settings) -> S3Store:
        bucket, _, prefix = settings.artifacts_url.removeprefix("s3://").partition("/")
        options: dict[str, Any] = {}
        if settings.s3_endpoint_url:
            options["endpoint_url"] = settings.s3_endpoint_url
        if settings.s3_region:
            options["region_name"] = settings.s3_region
        if settings.s3_access_key_id and settings.s3_secret_access_key:
            options["aws_access_key_id"] = settings.s3_access_key_id
            options["aws_secret_access_key"] = settings.s3_secret_access_key
        return cls(bucket=bucket, prefix=prefix, client_options=options)

    @property
    def is_local(self) -> bool:
        return False

    @property
    def client(self) -> Any:
        with self._lock:
            if self._client is None or self._pid != os.getpid():  # boto3 clients are not fork-safe
                import boto3
                from botocore.config import Config

                config = Config(retries={"max_attempts": 5, "mode": "standard"}, connect_timeout=5)
                self._client = boto3.client("s3", config=config, **self._options)
                self._pid = os.getpid()
            return self._client

    def _key(self, key: str) -> str:
        check_key(key)
        return f"{self.prefix}/{key}" if self.prefix else key

    def _call(self, what: str, key: str, call, *args: Any, **kwargs: Any) -> Any:  # type: ignore[no-untyped-def]
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            return call(*args, **kwargs)
        except ClientError as exc:
            code = str(exc.response.get("Error", {}).get("Code", ""))
            if code in _MISSING_CODES:
                raise ArtifactMissing(f"{key} is not in the artifact store") from None
            if code in ("NoSuchBucket", "AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch"):
                raise ArtifactUnavailable(f"the artifact store refused to {what} {key} ({code})") from None
            raise ArtifactError(f"the artifact store failed to {what} {key} ({code})") from None
        except (BotoCoreError, OSError) as exc:
            raise ArtifactUnavailable(
                f"the artifact store is unreachable ({type(exc).__name__}) while trying to {what} {key}"
            ) from None

    def put_file(self, key: str, source: Path) -> None:
        self._call("store", key, self.client.upload_file, str(source), self.bucket, self._key(key))

    def put_bytes(self, key: str, data: bytes) -> None:
        self._call("store", key, self.client.put_object, Bucket=self.bucket, Key=self._key(key), Body=data)

    def get_file(self, key: str, target: Path) -> None:
        self._call("read", key, self.client.download_file, self.bucket, self._key(key), str(target))

    def get_bytes(self, key: str) -> bytes:
        response = self._call("read", key, self.client.get_object, Bucket=self.bucket, Key=self._key(key))
        return self._call("read", key, response["Body"].read)

    def exists(self, key: str) -> bool:
        try:
            self._call("read", key, self.client.head_object, Bucket=self.bucket, Key=self._key(key))
        except ArtifactMissing:
            return False
        return True

    def keys(self, prefix: str) -> Iterator[str]:
        paginator = self.client.get_paginator("list_objects_v2")
        full = self._key(prefix) + "/"
        strip = len(self.prefix) + 1 if self.prefix else 0
        pages = self._call("list", prefix, lambda: list(paginator.paginate(Bucket=self.bucket, Prefix=full)))
        for page in pages:
            for item in page.get("Contents", []):
                yield item["Key"][strip:]

    def delete_prefix(self, prefix: str) -> int:
        keys = [self._key(key) for key in self.keys(prefix)]
        for start in range(0, len(keys), 1000):  # the API's limit per request
            batch = [{"Key": key} for key in keys[start : start + 1000]]
            self._call(
                "delete", prefix, self.client.delete_objects, Bucket=self.bucket, Delete={"Objects": batch}
            )
        return len(keys)
