"""The database store (``NER_ARTIFACTS_URL=postgresql``): objects as chunked rows of ``artifact_chunks``.

For small deployments with nothing but a managed PostgreSQL (Render): a 45 MB model is a dozen
rows. One object is replaced in one transaction, so a reader sees the old bytes or the new ones.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

from sqlalchemy import Engine, delete, func, insert, select
from sqlalchemy.exc import SQLAlchemyError

from shared.artifacts.errors import ArtifactMissing, ArtifactUnavailable
from shared.artifacts.store import check_key
from shared.core.tables import ArtifactChunk

CHUNK_BYTES = 4 * 1024 * 1024  # rows of a few MB: far from PostgreSQL's 1 GB value limit, cheap to stream


class DatabaseStore:
    """Objects in the service's own database; an engine of its own, created on first use."""

    url = "postgresql:"

    def __init__(self, database_url: str) -> None:
        self._database_url = database_url
        self._engine: Engine | None = None
        self._pid = os.getpid()

    @property
    def is_local(self) -> bool:
        return False

    @property
    def engine(self) -> Engine:
        # One per process: a forked pool process must not share its parent's pooled connections.
        if self._engine is None or self._pid != os.getpid():
            from shared.core.db import make_engine

            self._engine, self._pid = make_engine(self._database_url), os.getpid()
        return self._engine

    def _write(self, key: str, pieces: Iterator[bytes]) -> None:
        check_key(key)
        try:
            with self.engine.begin() as connection:
                connection.execute(delete(ArtifactChunk).where(ArtifactChunk.key == key))
                seq = 0
                for piece in pieces:
                    connection.execute(insert(ArtifactChunk).values(key=key, seq=seq, data=piece))
                    seq += 1
                if seq == 0:  # an empty object is one empty chunk, so it exists
                    connection.execute(insert(ArtifactChunk).values(key=key, seq=0, data=b""))
        except SQLAlchemyError as exc:
            raise ArtifactUnavailable(
                f"could not store {key} in the database ({type(exc).__name__})"
            ) from None

    def put_file(self, key: str, source: Path) -> None:
        def pieces() -> Iterator[bytes]:
            with source.open("rb") as handle:
                while piece := handle.read(CHUNK_BYTES):
                    yield piece

        self._write(key, pieces())

    def put_bytes(self, key: str, data: bytes) -> None:
        self._write(key, (data[i : i + CHUNK_BYTES] for i in range(0, len(data), CHUNK_BYTES)))

    def _pieces(self, key: str) -> Iterator[bytes]:
        check_key(key)
        try:
            with self.engine.connect() as connection:
                seqs = connection.scalars(
                    select(ArtifactChunk.seq).where(ArtifactChunk.key == key).order_by(ArtifactChunk.seq)
                ).all()
                if not seqs:
                    raise ArtifactMissing(f"{key} is not in the artifact store")
                for seq in seqs:  # one chunk in memory at a time
                    yield connection.scalar(
                        select(ArtifactChunk.data).where(ArtifactChunk.key == key, ArtifactChunk.seq == seq)
                    )
        except SQLAlchemyError as exc:
            raise ArtifactUnavailable(
                f"could not read {key} from the database ({type(exc).__name__})"
            ) from None

    def get_file(self, key: str, target: Path) -> None:
        with target.open("wb") as handle:
            for piece in self._pieces(key):
                handle.write(piece)

    def get_bytes(self, key: str) -> bytes:
        return b"".join(self._pieces(key))

    def exists(self, key: str) -> bool:
        try:
            with self.engine.connect() as connection:
                return connection.scalar(select(func.count()).where(ArtifactChunk.key == check_key(key))) > 0
        except SQLAlchemyError as exc:
            raise ArtifactUnavailable(
                f"could not read {key} from the database ({type(exc).__name__})"
            ) from None

    def keys(self, prefix: str) -> Iterator[str]:
        pattern = check_key(prefix) + "/"
        try:
            with self.engine.connect() as connection:
                rows = connection.scalars(
                    select(ArtifactChunk.key)
                    .where(ArtifactChunk.seq == 0, ArtifactChunk.key.startswith(pattern, autoescape=True))
                    .order_by(ArtifactChunk.key)
                ).all()
        except SQLAlchemyError as exc:
            raise ArtifactUnavailable(
                f"could not list {prefix} in the database ({type(exc).__name__})"
            ) from None
        yield from rows

    def delete_prefix(self, prefix: str) -> int:
        pattern = check_key(prefix) + "/"
        try:
            with self.engine.begin() as connection:
                count = connection.scalar(
                    select(func.count()).where(
                        ArtifactChunk.seq == 0, ArtifactChunk.key.startswith(pattern, autoescape=True)
                    )
                )
                connection.execute(
                    delete(ArtifactChunk).where(ArtifactChunk.key.startswith(pattern, autoescape=True))
                )
        except SQLAlchemyError as exc:
            raise ArtifactUnavailable(
                f"could not delete {prefix} in the database ({type(exc).__name__})"
            ) from None
        return int(count or 0)
