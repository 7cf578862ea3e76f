"""facesite settings: Django's, plus facesite's own read and validated by facesite/config.py.

With no environment set, everything points at the local stack (moto on 127.0.0.1:5000, SQLite).
Real AWS is opted into with ``FACESITE_AWS_ENDPOINT=`` (empty: boto3's real endpoints) plus the
usual AWS credential chain. Every knob, its default and its meaning is a field of
`facesite.config.FacesiteConfig`; each is available here as ``FACESITE_<FIELD>``. Resource names
derived from the prefix are not settings: `facesite.aws.names()` computes them.
"""

from django.core.exceptions import ImproperlyConfigured

from facesite import config
from facesite.aws.names import Names
from facesite.database import database

try:
    CONFIG = config.load()
except config.ConfigError as error:
    raise ImproperlyConfigured(f"invalid configuration: {error}") from None

BASE_DIR = config.BASE_DIR
# FACESITE_PREFIX, FACESITE_MAX_INSTANCES, ...: one setting per field of the configuration.
globals().update({f"FACESITE_{field.upper()}": value for field, value in CONFIG})


def _account_from_sts(region: str) -> str:
    """The account of the credentials in use (on AWS, when FACESITE_AWS_ACCOUNT_ID is unset)."""
    import boto3
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        return boto3.client("sts", region_name=region).get_caller_identity()["Account"]
    except (BotoCoreError, ClientError) as error:
        raise ImproperlyConfigured(
            f"FACESITE_AWS_ACCOUNT_ID is unset and STS cannot tell the account ({error})"
        ) from None


# Never a placeholder on AWS: queue URLs, ARNs and bucket names carry the real account.
FACESITE_AWS_ACCOUNT_ID = CONFIG.aws_account_id or _account_from_sts(CONFIG.region)
# Bucket names are global: on AWS they end with the account id unless configured otherwise.
FACESITE_BUCKET_SUFFIX = (
    CONFIG.bucket_suffix if CONFIG.bucket_suffix is not None else FACESITE_AWS_ACCOUNT_ID
)

# --- Django -------------------------------------------------------------------------------------

SECRET_KEY = CONFIG.secret_key
DEBUG = CONFIG.debug
ALLOWED_HOSTS = [host.strip() for host in CONFIG.allowed_hosts.split(",") if host.strip()]
# On AWS cookies travel over HTTPS only (FACESITE_SECURE_COOKIES); the front (nginx, or a
# load balancer) says which scheme the client used.
SESSION_COOKIE_SECURE = CSRF_COOKIE_SECURE = bool(CONFIG.secure_cookies)
if not CONFIG.is_local:
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")

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
    "apikeys",
    # django-ninja serves /api/v1/; listed so its docs page uses its bundled (local) assets.
    "ninja",
    "operations",
]

MIDDLEWARE = [
    # First, so that its count, duration and log line cover every other middleware's answer.
    "facesite.metrics.RequestMetricsMiddleware",
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    # Every 4xx/5xx under /api/v1/ is a JSON error, including Django's own 404 and 500.
    "recognition.api.middleware.json_errors",
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
VAR_DIR = CONFIG.var_dir

# SQLite under var/ unless FACESITE_DATABASE_URL names a PostgreSQL server (facesite/database.py).
DATABASES = {
    "default": database(CONFIG.database_url, CONFIG.db_path, CONFIG.database_pool_size),
}

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = False
USE_TZ = True
STATIC_URL = "static/"

# Uploads larger than the cap are refused with 413 before they reach the view's logic; the
# multipart envelope adds a few hundred bytes.
DATA_UPLOAD_MAX_MEMORY_SIZE = CONFIG.max_upload_bytes + 64 * 1024
FILE_UPLOAD_MAX_MEMORY_SIZE = CONFIG.max_upload_bytes + 64 * 1024

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {
        "plain": {"format": "%(asctime)s %(levelname)s %(name)s[%(process)d]: %(message)s"},
        "json": {"()": "facesite.logs.JsonFormatter"},
    },
    # Gives each record the request id it concerns, when one is known (facesite/logs.py).
    "filters": {"request_id": {"()": "facesite.logs.RequestIdFilter"}},
    "handlers": {
        "console": {
            "class": "logging.StreamHandler",
            "formatter": CONFIG.log_format,
            "filters": ["request_id"],
        }
    },
    "root": {"handlers": ["console"], "level": CONFIG.log_level},
    "loggers": {
        "botocore": {"level": "WARNING"},
        "urllib3": {"level": "WARNING"},
    },
}

# --- AWS ----------------------------------------------------------------------------------------

AWS_ENDPOINT_URL = CONFIG.endpoint_url  # None: real AWS
AWS_REGION = CONFIG.region
# On the emulator (which accepts any credentials) boto3 and kombu get these, so neither looks
# for real ones; on AWS both use the usual credential chain (an instance profile).
AWS_CREDENTIALS = CONFIG.emulator_credentials

# --- Celery (read by facesite/celery_app.py with namespace "CELERY") ----------------------------

_NAMES = Names(
    prefix=CONFIG.prefix,
    region=CONFIG.region,
    account=FACESITE_AWS_ACCOUNT_ID,
    sqs_endpoint=CONFIG.aws_endpoint,
)
CELERY_BROKER_URL = CONFIG.celery_broker_url
# Queue URLs are predefined so kombu never lists, creates or deletes queues (the IAM policy on
# AWS grants none of that).
CELERY_BROKER_TRANSPORT_OPTIONS = {
    "region": CONFIG.region,
    "is_secure": not CONFIG.aws_endpoint.startswith("http://"),
    "predefined_queues": {_NAMES.request_queue: {"url": _NAMES.request_queue_url}},
    "visibility_timeout": CONFIG.visibility_timeout,
    "wait_time_seconds": CONFIG.sqs_wait_seconds,
    # After an empty receive (a 20 s long poll, so SQS is not hammered) or when the worker may
    # not take a message yet (its last one not yet acknowledged, which Celery does a moment
    # later), kombu tries again after this pause. With 0 it reschedules itself for "soon",
    # which kombu's event loop runs only after sleeping 0.1 s whenever no socket is open, as
    # between two receives: about half of all tasks started 90 ms late. A 1 ms timer is
    # honoured as 1 ms (`python -m bench.pipeline`: single-request latency).
    "polling_interval": 0.001,
    # Raw JSON instead of base64: part of fitting every message in 1,024 bytes.
    "sqs_base64_encoding": False,
    # kombu would base64 the task body inside that JSON as well: plain JSON is a third smaller.
    "body_encoding": None,
}
CELERY_IMPORTS = ("recognition.worker.tasks", "recognition.worker.api_tasks")
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
CELERY_TASK_DEFAULT_QUEUE = _NAMES.request_queue
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_TASK_IGNORE_RESULT = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
# Deletes request-queue messages that are not tasks it can run, instead of leaving them to come
# back until they are dead-lettered (see recognition/worker/consumer.py).
CELERY_WORKER_CONSUMER = "recognition.worker.consumer:PoisonDroppingConsumer"
CELERY_WORKER_HIJACK_ROOT_LOGGER = False
# SQS has no broadcast: no remote control, events, gossip or mingle.
CELERY_WORKER_ENABLE_REMOTE_CONTROL = False
CELERY_WORKER_SEND_TASK_EVENTS = False
CELERY_TASK_SEND_SENT_EVENT = False
