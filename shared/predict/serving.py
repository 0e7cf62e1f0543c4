"""Which model answers: the registry's active version, else ``NER_MODEL``; loaded off the request path.

The gateway and the bulk workers share this. A background thread polls the registry every
``model_poll_seconds`` and wakes at once on a Redis ``ACTIVE_CHANNEL`` message; a new active
version is loaded beside the old one and swapped in by one reference assignment, so a request
already holding the old engine finishes on it and no request waits for a load.

A request may pin another registry version (``model_version``): ``load_version`` loads it in a
thread of its own and keeps it in a small LRU of engines (NER_MODEL_CACHE_SIZE), so requests to
the active version go on while it loads.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from shared.artifacts.errors import ArtifactError
from shared.core.config import Settings
from shared.core.redis import wake_on_messages
from shared.predict.engine.errors import ModelLoadError
from shared.predict.errors import HOW_TO_GET_A_MODEL, ModelNotReady, NoModelAvailable, VersionNotLoadable
from shared.registry import service as registry
from shared.registry.errors import CorruptVersion, VersionNotFound
from shared.registry.notify import ACTIVE_CHANNEL

if TYPE_CHECKING:
    from shared.predict.engine import NerEngine

log = logging.getLogger(__name__)

# A version that failed to load is tried again after this long, not on every poll.
RETRY_FAILED_LOAD_S = 60.0


@dataclass(frozen=True)
class ModelRef:
    """What to serve: a registry version (with its artifact folder) or the NER_MODEL reference."""

    version: int | None
    path: str

    @property
    def key(self) -> str:
        return f"v{self.version}" if self.version is not None else f"ref:{self.path}"


@dataclass(frozen=True)
class ServedModel:
    """A loaded engine and the version it belongs to (None when serving NER_MODEL)."""

    version: int | None
    ref: str
    engine: NerEngine

    @property
    def key(self) -> str:
        """The model's name in caches and batches (``v3``, or ``ref:`` and NER_MODEL's folder)."""
        return ModelRef(version=self.version, path=self.ref).key

    def describe(self) -> dict[str, object]:
        return {
            "version": self.version,
            "ref": self.ref,
            "device": str(self.engine.device),
            "precision": self.engine.precision,
            "packed": self.engine.packed,
        }


def _engine_loader(settings: Settings) -> Callable[[str], NerEngine]:
    """``NerEngine.load`` with the settings' options; torch is imported here, where a model is served."""
    from shared.predict.engine import EngineOptions, NerEngine

    options = EngineOptions.from_settings(settings)
    return lambda path: NerEngine.load(path, options)


class ModelProvider:
    """Resolves, loads, caches and hot-swaps the served model. Thread-safe."""

    def __init__(
        self,
        settings: Settings,
        *,
        session_factory: Callable[[], Session] | None = None,
        loader: Callable[[str], NerEngine] | None = None,
        max_cached: int | None = None,
    ) -> None:
        self.settings = settings
        self._session_factory = session_factory
        self._loader = loader or _engine_loader(settings)
        self._max_cached = max_cached if max_cached is not None else settings.model_cache_size
        self._cache: OrderedDict[str, ServedModel] = OrderedDict()
        self._cache_lock = threading.Lock()
        self._load_locks: dict[str, threading.Lock] = {}
        self._failed: dict[str, tuple[float, str]] = {}
        self._active: ServedModel | None = None
        self._resolved_none = False  # the last resolution found neither registry version nor NER_MODEL
        self._last_error: str | None = None
        # The registry version that should answer but failed to load (None when all is well); while
        # set, ``_active`` is the last good model kept or fallen back to.
        self._wanted_failed: int | None = None
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        # Pinned versions load here, one at a time: never in a request's thread or the batcher's.
        self._pinned_loader: ThreadPoolExecutor | None = None
        self._pinned_loads: dict[int, Future[ServedModel]] = {}

    # --- public API --------------------------------------------------------------------------

    def start(self) -> None:
        """Load the model and follow the registry in background threads; returns at once."""
        if self._threads:
            return
        self._stop.clear()
        watcher = threading.Thread(target=self._watch, name="model-watch", daemon=True)
        listener = threading.Thread(target=self._listen, name="model-listen", daemon=True)
        self._threads = [watcher, listener]
        for thread in self._threads:
            thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        for thread in self._threads:
            thread.join(timeout=5)
        self._threads = []
        if self._pinned_loader is not None:
            self._pinned_loader.shutdown(wait=False, cancel_futures=True)
            self._pinned_loader = None

    def active(self) -> ServedModel:
        """The model that answers now. Without background threads, resolves and loads on first use."""
        served = self._active
        if served is not None:
            return served
        if not self._threads:
            served = self.refresh()
            if served is not None:
                return served
        if self._resolved_none:
            raise NoModelAvailable(self._no_model_message())
        if self._last_error:
            raise ModelNotReady(f"the model could not be loaded: {self._last_error}")
        raise ModelNotReady("the model is still loading; retry in a few seconds")

    def get(self, version: int) -> ServedModel:
        """A pinned registry version (e.g. the one a bulk job was submitted with), loaded if needed."""
        active = self._active
        if active is not None and active.version == version:
            return active
        with self._session() as session:
            row = registry.get_version(session=session, version=version)
            if row is None:
                raise VersionNotFound(f"model version {version} does not exist")
            ref = ModelRef(version=row.version, path=row.path)
        return self._load(ref)

    def loaded(self, version: int) -> ServedModel | None:
        """A registry version if it is loaded (the active one or in the LRU); never loads, no database."""
        active = self._active
        if active is not None and active.version == version:
            return active
        key = ModelRef(version=version, path="").key  # a version's key does not depend on its folder
        with self._cache_lock:
            cached = self._cache.get(key)
            if cached is not None:
                self._cache.move_to_end(key)
            return cached

    def load_version(self, version: int) -> Future[ServedModel]:
        """A pinned registry version, loaded in the background if needed (one load per version).

        Raises VersionNotFound (404) at once for a version the registry does not have; the future
        fails with VersionNotLoadable when its files do not load (tried again after a while).
        """
        served = self.loaded(version)
        if served is not None:
            done: Future[ServedModel] = Future()
            done.set_result(served)
            return done
        with self._session() as session:
            row = registry.get_version(session=session, version=version)
            if row is None:
                raise VersionNotFound(f"model_version: version {version} does not exist")
            ref = ModelRef(version=row.version, path=row.path)
        failed = self._failed.get(ref.key)
        if failed and time.monotonic() - failed[0] < RETRY_FAILED_LOAD_S:
            raise VersionNotLoadable(
                f"model_version: version {version} does not load: {_for_callers(failed[1], ref)}"
            )
        with self._cache_lock:
            pending = self._pinned_loads.get(version)
            if pending is None:
                if self._pinned_loader is None:
                    self._pinned_loader = ThreadPoolExecutor(max_workers=1, thread_name_prefix="model-pinned")
                pending = self._pinned_loader.submit(self._load_pinned, ref)
                self._pinned_loads[version] = pending
            return pending

    def _load_pinned(self, ref: ModelRef) -> ServedModel:
        try:
            return self._load(ref)
        except ModelLoadError as exc:
            self._failed[ref.key] = (time.monotonic(), str(exc))
            log.error("pinned %s does not load: %s", ref.key, exc)
            raise VersionNotLoadable(
                f"model_version: version {ref.version} does not load: {_for_callers(str(exc), ref)}"
            ) from None
        finally:
            with self._cache_lock:
                assert ref.version is not None
                self._pinned_loads.pop(ref.version, None)

    def get_ref(self, path: str) -> ServedModel:
        """A model by folder or hub id, outside the registry (a job pinned while serving NER_MODEL)."""
        return self._load(ModelRef(version=None, path=path))

    def refresh(self) -> ServedModel | None:
        """Resolve what should be served now and make it active (loading it here, in the caller)."""
        try:
            ref = self.resolve()
        except SQLAlchemyError as exc:
            # The database is down: keep serving what we have; without anything, NER_MODEL still works.
            log.warning("model registry unreachable: %s", exc.__class__.__name__)
            self._last_error = f"model registry unreachable ({exc.__class__.__name__})"
            if self._active is not None or not self.settings.model:
                return self._active
            ref = ModelRef(version=None, path=self.settings.model)
        if ref is None:
            self._resolved_none = True
            return self._active
        self._resolved_none = False
        if self._active is not None and self._active.ref == ref.path and self._active.version == ref.version:
            return self._active
        failed = self._failed.get(ref.key)
        if failed and time.monotonic() - failed[0] < RETRY_FAILED_LOAD_S:
            return self._active
        try:
            served = self._load(ref)
        except ModelLoadError as exc:
            self._failed[ref.key] = (time.monotonic(), str(exc))
            self._last_error = str(exc)
            log.error("cannot serve %s; keeping the current model: %s", ref.key, exc)
            if ref.version is not None:
                self._wanted_failed = ref.version
                self._record_load_error(ref.version, _without_path(str(exc), ref))
            if self._active is None:
                return self._fall_back(failed=ref)
            return self._active
        previous, self._active = self._active, served  # the swap: one reference assignment
        self._last_error = None
        self._wanted_failed = None
        if previous is None or (previous.version, previous.ref) != (served.version, served.ref):
            log.info("now serving %s (%s)", ref.key, ref.path)
            if served.version is not None:
                self._record_load_error(served.version, None)
        return served

    def resolve(self) -> ModelRef | None:
        """The active registry version, else NER_MODEL, else None."""
        with self._session() as session:
            row = registry.get_active(session=session)
            if row is not None:
                return ModelRef(version=row.version, path=row.path)
        if self.settings.model:
            return ModelRef(version=None, path=self.settings.model)
        return None

    def notify(self) -> None:
        """Check the registry now instead of at the next poll (e.g. right after an activation)."""
        self._wake.set()

    @property
    def load_error(self) -> str | None:
        """Why the last model that should be served could not be loaded (None after a good load)."""
        return self._last_error

    @property
    def ready(self) -> bool:
        return self._active is not None

    def status(self) -> str:
        """``ok``, ``degraded: ...`` (a model answers, but not the registry's active version), or why
        no model answers, for /readyz. Names versions, never folders."""
        active = self._active
        if active is not None:
            failed = self._wanted_failed
            if failed is not None and active.version != failed:
                serving = f"version {active.version}" if active.version is not None else "NER_MODEL"
                return f"degraded: version {failed} could not be loaded; serving {serving}"
            return "ok"
        if self._resolved_none:
            return self._no_model_message()
        if self._wanted_failed is not None:
            return f"error: version {self._wanted_failed} could not be loaded and no earlier version loads"
        return f"error: {self._last_error}" if self._last_error else "loading"

    def describe(self) -> dict[str, object] | None:
        """The active model for metrics and /readyz (with ``load_failed``: the active version that
        could not be loaded, when it is not the one answering); None before one is loaded."""
        active = self._active
        if active is None:
            return None
        info = active.describe()
        failed = self._wanted_failed
        info["load_failed"] = failed if failed is not None and failed != active.version else None
        return info

    # --- internals ---------------------------------------------------------------------------

    def _no_model_message(self) -> str:
        """How far the training of a first model is (bootstrap), else how to get a model."""
        from shared.training.status import no_model_message

        try:
            with self._session() as session:
                return no_model_message(session=session) or HOW_TO_GET_A_MODEL
        except SQLAlchemyError:
            return HOW_TO_GET_A_MODEL

    def _session(self) -> Session:
        if self._session_factory is None:
            from shared.core.db import get_sessionmaker

            return get_sessionmaker()()
        return self._session_factory()

    def _load(self, ref: ModelRef) -> ServedModel:
        with self._cache_lock:
            cached = self._cache.get(ref.key)
            if cached is not None and cached.ref == ref.path:
                self._cache.move_to_end(ref.key)
                return cached
            lock = self._load_locks.setdefault(ref.key, threading.Lock())
        with lock:  # one load per model, however many callers want it at once
            with self._cache_lock:
                cached = self._cache.get(ref.key)
                if cached is not None and cached.ref == ref.path:
                    return cached
            folder = _verify(ref, self.settings)  # a stored version is fetched here, off the request path
            started = time.monotonic()
            served = ServedModel(version=ref.version, ref=ref.path, engine=self._loader(folder))
            log.info("loaded %s in %.1fs", ref.key, time.monotonic() - started)
            with self._cache_lock:
                self._cache[ref.key] = served
                self._cache.move_to_end(ref.key)
                while len(self._cache) > self._max_cached:
                    key, old = next(iter(self._cache.items()))
                    if old is self._active:  # never evict what is answering
                        self._cache.move_to_end(key)
                        continue
                    # In-flight users keep their reference; the engine is freed when they finish.
                    del self._cache[key]
            return served

    def _fall_back(self, *, failed: ModelRef) -> ServedModel | None:
        """Nothing answers and the active version does not load: serve the version that was active
        before it (newest first, skipping any known not to load), else NER_MODEL."""
        try:
            with self._session() as session:
                refs = [
                    ModelRef(version=row.version, path=row.path)
                    for row in registry.fallback_versions(session=session, exclude=failed.version)
                ]
        except SQLAlchemyError as exc:
            log.warning("no fallback: model registry unreachable (%s)", exc.__class__.__name__)
            refs = []
        if self.settings.model and failed.version is not None:
            refs.append(ModelRef(version=None, path=self.settings.model))
        for ref in refs:
            try:
                served = self._load(ref)
            except ModelLoadError as exc:
                log.error("fallback %s does not load either: %s", ref.key, exc)
                if ref.version is not None:
                    self._record_load_error(ref.version, _without_path(str(exc), ref))
                continue
            self._active = served
            log.warning("%s could not be loaded; serving %s instead", failed.key, ref.key)
            return served
        return None

    def _record_load_error(self, version: int, error: str | None) -> None:
        """Tell the registry (so GET /models shows it) that ``version`` does or does not load here."""
        try:
            with self._session() as session:
                registry.record_load_error(session=session, version=version, error=error)
                session.commit()
        except SQLAlchemyError as exc:  # reporting must never stop serving
            log.warning("could not record the load status of v%s: %s", version, exc.__class__.__name__)

    def _watch(self) -> None:
        while not self._stop.is_set():
            try:
                self.refresh()
            except Exception:  # the watcher must outlive any one bad poll
                log.exception("model refresh failed")
            self._wake.wait(self.settings.model_poll_seconds)
            self._wake.clear()

    def _listen(self) -> None:
        """Wake the watcher when a version is activated; polling covers Redis being down."""
        wake_on_messages(self.settings.redis_url, ACTIVE_CHANNEL, wake=self._wake, stop=self._stop)


def _verify(ref: ModelRef, settings: Settings) -> str:
    """Check a folder before anything deserialises it: a registry version against its manifest
    (safetensors, hashes; a version in the artifact store is fetched into this node's cache and
    checked there), a local NER_MODEL folder for pickle-only weights. Returns the folder to load;
    raises ModelLoadError."""
    if ref.version is not None:
        try:
            return registry.verify_folder(path=ref.path, settings=settings)
        except (CorruptVersion, ArtifactError) as exc:
            raise ModelLoadError(f"version {ref.version} failed verification: {exc}") from None
    folder = Path(ref.path)
    if folder.is_dir() and not (folder / "model.safetensors").is_file():
        raise ModelLoadError(f"{ref.path!r} has no model.safetensors; pickle weights are never loaded")
    return ref.path


# An absolute path in a load error (the node's cache folder of a fetched version, say).
_ABSOLUTE_PATH = re.compile(r"(?<![\w.:/])/[^\s'\"]+")


def _for_callers(message: str, ref: ModelRef) -> str:
    """A load error as any caller with a predict key may see it: the admin view with every other
    folder of this server masked too, and shorter."""
    return _ABSOLUTE_PATH.sub("<folder>", _without_path(message, ref))[:500]


def _without_path(message: str, ref: ModelRef) -> str:
    """A load error as admins see it (recorded on the version; /models shows it to admin keys only):
    the version's own folder replaced by its name, other paths kept for the operator."""
    name = f"version {ref.version}" if ref.version is not None else "NER_MODEL"
    return message.replace(ref.path, name)[:2000]
