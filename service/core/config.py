"""Every setting of the service, the worker and `bnrank serve`, in one place (env prefix ``BNRANK_``).

The API and the worker are separate processes, often on separate machines; they must agree on the
database, the broker, the queue, the blob store and the data roots. Reading all of it from one class means
a setting cannot be added to one side and forgotten on the other, and `Settings.to_env` hands exactly the
same values to a child process (the embedded worker, test workers).

With nothing set, everything lives under ``./.bnrank/``: a SQLite file, kombu's filesystem broker and the
blob store, so a laptop needs no server at all. Setting ``BNRANK_DATABASE_URL`` and ``BNRANK_BROKER_URL``
switches the same code to PostgreSQL and Redis.
"""

from __future__ import annotations

import ipaddress
import json
import os
import secrets
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

GiB = 1024**3


def job_kinds() -> tuple[str, ...]:
    """The kinds of job the service runs: the registry's (imported when settings are read, not with this module)."""
    from service.core.kinds import KIND_NAMES

    return KIND_NAMES


class Settings(BaseSettings):
    """Settings read from ``BNRANK_*`` environment variables (or passed explicitly, as tests do)."""

    model_config = SettingsConfigDict(env_prefix="BNRANK_", extra="ignore", validate_default=True)

    home: Path = Field(
        default=Path(".bnrank"), description="folder for the embedded defaults (SQLite, broker, blobs, cache)"
    )
    database_url: str = Field(default="", description="SQLAlchemy URL; default: SQLite file under home")
    broker_url: str = Field(default="", description="Celery broker URL; default: kombu filesystem under home")
    queue: str = Field(default="bnrank", description="Celery queue the API sends to and workers consume")
    broker_key_prefix: str = Field(
        default="", description="prefix for every Redis key of the broker (several deployments on one Redis)"
    )
    visibility_timeout_s: int = Field(
        default=4 * 3600,
        ge=60,
        description="Redis: an unacknowledged task is redelivered after this long (must exceed a task's runtime)",
    )
    data_roots: Annotated[list[Path], NoDecode] = Field(
        default_factory=lambda: [Path.cwd()],
        description="folders datasets must live in (JSON list or os.pathsep-separated); default: the cwd",
    )
    blob_dir: Path | None = Field(
        default=None,
        description="content-addressed blob store; default: home/blobs. With blob_url set, the local cache of "
        "blobs read from the object store and the spool of uploads",
    )
    blob_url: str = Field(
        default="",
        description="s3://bucket/prefix: keep blobs in an S3-compatible object store (workers on other hosts need "
        "no shared folder); empty: the folder blob_dir",
    )
    s3_endpoint_url: str = Field(default="", description="object store endpoint (MinIO, Ceph, ...); empty: AWS S3")
    s3_region: str = Field(default="us-east-1", description="object store region")
    s3_access_key_id: str = Field(default="", description="object store key id; empty: boto3's own credential chain")
    s3_secret_access_key: str = Field(default="", description="object store secret key")
    s3_part_bytes: int = Field(
        default=8 * 1024**2,
        ge=5 * 1024**2,
        le=5 * GiB,
        description="part size of multipart uploads (the memory one upload holds; boto3's own default); "
        "S3 needs at least 5 MiB",
    )
    dataset_buckets: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="buckets datasets may be registered from as s3://bucket/prefix (JSON list or comma-separated); "
        "empty: none",
    )
    cache_dir: Path | None = Field(default=None, description="preprocessing cache; default: home/cache")
    max_upload_bytes: int = Field(default=2 * GiB, ge=1, description="largest accepted checkpoint upload")
    receive_buffer_bytes: int = Field(
        default=1024**2,
        ge=64 * 1024,
        le=64 * 1024**2,
        description="request body bytes uvicorn reads ahead of the app before it stops reading the socket "
        "(uvicorn's own: 64 KiB), per connection",
    )
    upload_validations: int = Field(
        default=2, ge=1, description="checkpoint validations run at once by one API process (each loads the file)"
    )
    dataset_checks: int = Field(
        default=1,
        ge=1,
        description="dataset registrations checked at once by one API process (each in a child process that reads "
        "one volume at a time); a registration that finds every slot busy waits up to dataset_check_wait_s, then 503",
    )
    dataset_check_wait_s: float = Field(
        default=10.0, ge=0, description="how long a registration waits for a free dataset-check slot before 503"
    )
    dataset_check_time_limit_s: float = Field(
        default=900.0, gt=0, description="a dataset registration whose check (in a child process) takes longer is 422"
    )
    max_volume_bytes: int = Field(
        default=2 * GiB,
        ge=1024**2,
        description="largest decompressed volume a registration reads (from the NIfTI header, before decompressing); "
        "the checking child's memory limit is derived from it",
    )
    orphan_grace_s: float = Field(
        default=24 * 3600.0,
        gt=0,
        description="`bnrank blobs sweep --delete` deletes a blob no row refers to only once it is this old",
    )
    device: str = Field(default="auto", description="worker device: auto (CUDA when present), cpu, cuda, cuda:N")
    worker_concurrency: int = Field(
        default=0, ge=0, description="tasks one worker runs at once; 0: one per GPU on a GPU worker, else 1"
    )
    worker_queues: Literal["auto", "gpu", "cpu", "all"] = Field(
        default="auto",
        description="queues a worker consumes: gpu (<queue>.gpu), cpu (<queue>), all; auto: all on a GPU worker, "
        "cpu otherwise",
    )
    gpu_kinds: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: list(job_kinds()),
        description="job kinds sent to the GPU queue when a GPU worker is there (JSON list or comma-separated)",
    )
    cpu_fallback_kinds: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: list(job_kinds()),
        description="of gpu_kinds, those sent to the CPU queue while no GPU worker is there; the others wait for "
        "one in the GPU queue",
    )
    worker_pool: Literal["prefork", "solo", "threads"] = Field(default="prefork", description="Celery pool")
    torch_threads: int = Field(
        default=0, ge=0, description="torch threads per task; 0: the cores this worker may use / worker_concurrency"
    )
    api_host: str = Field(default="127.0.0.1", description="address `bnrank serve` listens on")
    api_port: int = Field(default=8000, ge=0, le=65535, description="port `bnrank serve` listens on")
    api_processes: int = Field(
        default=1,
        ge=1,
        le=64,
        description="API processes `bnrank serve` runs behind its one port; more than 1 needs a Redis broker, "
        "where the rate limits and the caches' invalidations are shared",
    )
    progress_interval_s: float = Field(
        default=2.0, gt=0, description="how often a running task writes progress and checks for cancel"
    )
    lease_s: float = Field(
        default=60.0,
        gt=0,
        description="a running task whose heartbeat is older than this is presumed dead and its work re-sent",
    )
    requeue_after_s: float = Field(
        default=60.0,
        gt=0,
        description="a queued task the broker no longer holds is re-sent once it was dispatched this long ago",
    )
    recover_interval_s: float = Field(
        default=15.0, gt=0, description="how often each worker sweeps for lost or orphaned work"
    )
    live_cache_s: float = Field(
        default=0.25,
        ge=0,
        description="an unfinished ranking's body is served again for this long after it was read, and up to "
        "twice this long while one background read replaces it (0: off)",
    )
    sse_poll_interval_s: float = Field(default=0.5, gt=0, description="how often /jobs/{id}/events looks at a job")
    gamma_threshold: float = Field(default=0.05, gt=0, description="|γ| counted as near zero in γ statistics")
    max_candidates: int = Field(default=64, ge=1, le=64, description="most checkpoints in one ranking (64 at most)")
    max_json_body_bytes: int = Field(
        default=4 * 1024**2, ge=1024, description="largest JSON request body; a longer one is refused (413) unread"
    )
    worker_memory_gib: float = Field(
        default=24.0,
        gt=0,
        description="memory one task may use for a training step (GPU memory on a GPU worker); budgets whose "
        "estimated step needs more are refused when submitted (422), see docs/deploy.md",
    )
    sandbox: Literal["off", "bwrap"] = Field(
        default="off",
        description="'bwrap': a TorchScript archive of an architecture BNRank cannot rebuild is exported to ONNX by "
        "its own program inside a bubblewrap sandbox (no network, read-only host, seccomp, memory/CPU limits) and "
        "ranked as ONNX; 'off': such archives are refused. Needs Debian's bubblewrap on the API and worker hosts",
    )
    inspect_time_limit_s: float = Field(
        default=60.0, gt=0, description="an upload whose inspection (in a child process) takes longer is refused"
    )
    partial_grace_s: float = Field(
        default=3600.0,
        gt=0,
        description="an unfinished upload (*.partial in the blob store) untouched this long is deleted",
    )
    partial_sweep_interval_s: float = Field(
        default=600.0, gt=0, description="how often the API deletes abandoned partial uploads"
    )
    auth_failures_per_minute: int = Field(
        default=30,
        ge=0,
        description="failed authentications allowed in a minute, counted in separate buckets: requests without a "
        "key per client address, wrong keys per address and per key; then 429 with Retry-After; 0 turns it off",
    )
    submissions_per_minute: int = Field(
        default=120, ge=0, description="jobs one owner may submit in a minute, then 429; 0 turns the limit off"
    )
    rate_limit_store: Literal["auto", "process", "redis"] = Field(
        default="auto",
        description="where rate-limit counters live: redis (the broker's Redis, one limit across every API "
        "process), process (per API process), auto (redis when the broker is Redis, else process)",
    )
    trusted_proxies: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="addresses (or networks, or *) of reverse proxies whose X-Forwarded-For/-Proto are believed "
        "(comma-separated or a JSON list); default: none, the TCP peer is the client",
    )
    metrics_key: str = Field(
        default="", description="when set, GET /metrics requires 'Authorization: Bearer <metrics_key>'"
    )
    metrics_port: int = Field(
        default=0,
        ge=0,
        le=65535,
        description="when set, metrics are served on this port (at metrics_host) instead of the API's /metrics",
    )
    metrics_host: str = Field(default="127.0.0.1", description="address of the separate metrics port")
    session_secret: str = Field(
        default="",
        description="signs the dashboard's session cookies (/ui); default: a random secret generated once and kept "
        "in home/session_secret, so sessions survive restarts (set it when API processes do not share home)",
    )
    session_max_age_s: int = Field(
        default=7 * 24 * 3600, ge=60, description="a dashboard sign-in lasts this long (the key's revocation ends it)"
    )
    log_level: str = Field(default="INFO", description="log level of the API and the worker")
    log_format: Literal["text", "json"] = Field(
        default="text", description="text for a terminal; json (one object per line, with job ids) for collectors"
    )

    @field_validator("data_roots", mode="before")
    @classmethod
    def _split_roots(cls, value: Any) -> Any:
        """Accept a JSON list or a PATH-style list, because both are natural to type in a shell."""
        if isinstance(value, str):
            text = value.strip()
            if text.startswith("["):
                return json.loads(text)
            return [part for part in text.split(os.pathsep) if part]
        return value

    @field_validator("dataset_buckets", "gpu_kinds", "cpu_fallback_kinds", "trusted_proxies", mode="before")
    @classmethod
    def _split_commas(cls, value: Any) -> Any:
        """A JSON list or a comma-separated one."""
        if isinstance(value, str):
            text = value.strip()
            return json.loads(text) if text.startswith("[") else [b.strip() for b in text.split(",") if b.strip()]
        return value

    @field_validator("gpu_kinds", "cpu_fallback_kinds")
    @classmethod
    def _check_kinds(cls, value: list[str]) -> list[str]:
        unknown = sorted(set(value) - set(job_kinds()))
        if unknown:
            raise ValueError(f"unknown job kind(s) {', '.join(unknown)}; known: {', '.join(job_kinds())}")
        return value

    @field_validator("blob_url")
    @classmethod
    def _check_blob_url(cls, value: str) -> str:
        if value and (not value.startswith("s3://") or len(value) <= len("s3://") or value[5] == "/"):
            raise ValueError(f"blob_url must be s3://bucket[/prefix] (or empty for the folder blob_dir), got {value!r}")
        return value

    @field_validator("trusted_proxies")
    @classmethod
    def _check_proxies(cls, value: list[str]) -> list[str]:
        """Addresses or networks only (or ``*``): a typo must not silently trust nobody, or everybody."""
        for entry in value:
            if entry != "*":
                try:
                    ipaddress.ip_network(entry, strict=False)
                except ValueError as exc:
                    raise ValueError(f"trusted_proxies: {entry!r} is not an IP address, a network or *") from exc
        return value

    @field_validator("device")
    @classmethod
    def _check_device(cls, value: str) -> str:
        if value in ("auto", "cpu", "cuda") or (value.startswith("cuda:") and value[5:].isdigit()):
            return value
        raise ValueError(f"device must be auto, cpu, cuda or cuda:N, got {value!r}")

    @model_validator(mode="after")
    def _fill_defaults(self) -> Settings:
        """Absolute paths everywhere: a worker started from another folder must see the same files."""
        self.home = self.home.expanduser().absolute()
        if not self.database_url:
            self.database_url = f"sqlite:///{self.home / 'bnrank.sqlite3'}"
        if not self.broker_url:
            self.broker_url = "filesystem://"
        self.blob_dir = (self.blob_dir or self.home / "blobs").expanduser().absolute()
        self.cache_dir = (self.cache_dir or self.home / "cache").expanduser().absolute()
        self.data_roots = [p.expanduser().absolute() for p in self.data_roots]
        if not self.data_roots:
            raise ValueError("data_roots is empty: at least one folder must hold the datasets")
        if self.lease_s < 3 * self.progress_interval_s:
            raise ValueError(
                f"lease_s ({self.lease_s}) must be at least 3 × progress_interval_s ({self.progress_interval_s}):"
                " a live task renews its heartbeat only that often"
            )
        return self

    @model_validator(mode="after")
    def _check_processes(self) -> Settings:
        if self.api_processes > 1 and (
            not self.broker_url.startswith(("redis://", "rediss://")) or self.rate_limit_store == "process"
        ):
            raise ValueError(
                f"api_processes {self.api_processes} needs the rate limits and cache invalidations shared in Redis: "
                "set a redis:// broker_url (and rate_limit_store auto or redis), or run one process"
            )
        if self.api_processes > 1 and self.metrics_port:
            raise ValueError("metrics_port is one port per process: with api_processes > 1 scrape /metrics instead")
        return self

    @model_validator(mode="after")
    def _check_rate_limit_store(self) -> Settings:
        if self.rate_limit_store == "redis" and not self.broker_url.startswith(("redis://", "rediss://")):
            raise ValueError(
                f"rate_limit_store 'redis' keeps the counters in the broker's Redis, but the broker is "
                f"{self.broker_url.split('://')[0]}://; use process or auto"
            )
        return self

    # ----------------------------------------------------------------------------------------- derived

    @property
    def embedded_broker(self) -> bool:
        return self.broker_url.startswith("filesystem://")

    @property
    def broker_folder(self) -> Path:
        return self.home / "broker"

    @property
    def worker_memory_bytes(self) -> int:
        return int(self.worker_memory_gib * GiB)

    @property
    def blobs(self) -> Path:
        assert self.blob_dir is not None  # filled by the validator
        return self.blob_dir

    @property
    def preprocess_cache(self) -> Path:
        assert self.cache_dir is not None
        return self.cache_dir

    def broker_transport_options(self) -> dict[str, Any]:
        if self.embedded_broker:
            queue_dir = self.broker_folder / "queue"
            return {
                "data_folder_in": str(queue_dir),
                "data_folder_out": str(queue_dir),
                "control_folder": str(self.broker_folder / "control"),
                "store_processed": False,
                "polling_interval": 0.2,
            }
        options: dict[str, Any] = {"visibility_timeout": self.visibility_timeout_s}
        if self.broker_key_prefix:
            options["global_keyprefix"] = self.broker_key_prefix
        return options

    def ensure_folders(self) -> None:
        """Create the folders the embedded defaults need (the filesystem broker will not create its own)."""
        for folder in (self.home, self.blobs, self.preprocess_cache):
            folder.mkdir(parents=True, exist_ok=True)
        if self.embedded_broker:
            for key in ("data_folder_in", "control_folder"):
                Path(self.broker_transport_options()[key]).mkdir(parents=True, exist_ok=True)

    def session_key(self) -> str:
        """The secret that signs dashboard sessions: ``session_secret``, else one generated once under ``home``.

        Generated with ``secrets`` and published by a hard link of a complete 0600 file, so a process starting
        at the same time either wins or reads the winner's whole secret, never a half-written one.
        """
        if self.session_secret:
            return self.session_secret
        path = self.home / "session_secret"
        if not path.exists():
            self.home.mkdir(parents=True, exist_ok=True)
            draft = path.with_name(f".session_secret.{secrets.token_hex(6)}")
            fd = os.open(draft, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(secrets.token_urlsafe(48) + "\n")
            try:
                os.link(draft, path)
            except FileExistsError:
                pass  # another process published one first: use it
            finally:
                draft.unlink()
        text = path.read_text().strip()
        if len(text) < 32:
            raise ValueError(f"{path} holds no usable session secret; delete it or set BNRANK_SESSION_SECRET")
        return text

    def to_env(self) -> dict[str, str]:
        """``BNRANK_*`` variables that reproduce these settings in a child process."""
        env: dict[str, str] = {}
        for name, value in self.model_dump().items():
            if value is None:
                continue
            text = json.dumps([str(v) for v in value]) if isinstance(value, list) else str(value)
            env[f"BNRANK_{name.upper()}"] = text
        return env


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings from the environment, read once."""
    return Settings()
