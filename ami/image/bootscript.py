"""The app-tier boot script: the EC2 user data every worker instance is launched with.

It writes the worker's configuration to an environment file and starts the systemd unit that
runs `manage.py runworker` (the unit is baked into the AMI by `manage.py buildami`). It carries
configuration only, never a credential: on AWS the worker takes its credentials from the
instance profile. The local instance runner reads the same script back with `parse_user_data`.
"""

import re
from pathlib import Path
from string import Template

from django.conf import settings

TEMPLATES = Path(__file__).resolve().parent / "templates"

ENV_FILE = "/etc/facesite/worker.env"
WORKER_UNIT = "facesite-worker.service"
# EC2 refuses user data above 16 KB (before base64).
USER_DATA_LIMIT = 16 * 1024

# The environment travels in a quoted heredoc: bash expands nothing inside it, and the same
# KEY=value lines are a valid systemd EnvironmentFile.
_HEREDOC_END = "FACESITE_ENV"
_HEREDOC_START = f"cat > {ENV_FILE} <<'{_HEREDOC_END}'"
_KEY = re.compile(r"[A-Z_][A-Z0-9_]*")
# No quotes, spaces, backslashes or `$`: systemd would interpret them, bash and our parser
# would not, and the three must agree on every value.
_VALUE = re.compile(r"[A-Za-z0-9_.,:/@%+=~-]*")

# One request at a time per instance, so one thread for every native thread pool as well: more
# would only contend (and numpy's OpenBLAS would start its threads at import otherwise).
SINGLE_THREAD_ENVIRONMENT = {
    "OMP_NUM_THREADS": "1",
    "OPENBLAS_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
}


def worker_environment() -> dict[str, str]:
    """The settings a worker needs, as environment variables, taken from this process's
    settings so workers run with the configuration of the scaler that launches them."""
    return {
        "FACESITE_PREFIX": settings.FACESITE_PREFIX,
        "AWS_DEFAULT_REGION": settings.AWS_REGION,
        "FACESITE_AWS_ACCOUNT_ID": settings.FACESITE_AWS_ACCOUNT_ID,
        "FACESITE_BUCKET_SUFFIX": settings.FACESITE_BUCKET_SUFFIX,
        # Always written: unset means "the local emulator" to facesite.settings, so real AWS
        # must be spelled as the empty value.
        "FACESITE_AWS_ENDPOINT": settings.AWS_ENDPOINT_URL or "",
        "FACESITE_ENGINE_THREADS": "1",
        "FACESITE_EMBEDDER": settings.FACESITE_EMBEDDER,
        "FACESITE_MATCH_THRESHOLD": (
            ""
            if settings.FACESITE_MATCH_THRESHOLD is None
            else str(settings.FACESITE_MATCH_THRESHOLD)
        ),
        "FACESITE_TOP_K": str(settings.FACESITE_TOP_K),
        "FACESITE_MAX_PIXELS": str(settings.FACESITE_MAX_PIXELS),
        "FACESITE_DETECT_MAX_SIDE": str(settings.FACESITE_DETECT_MAX_SIDE),
        "FACESITE_LOG_LEVEL": settings.LOGGING["root"]["level"],
        "FACESITE_VISIBILITY_TIMEOUT": str(settings.FACESITE_VISIBILITY_TIMEOUT),
        "FACESITE_SQS_WAIT_SECONDS": str(settings.FACESITE_SQS_WAIT_SECONDS),
        "FACESITE_SELF_STOP_INTERVAL": str(settings.FACESITE_SELF_STOP_INTERVAL),
        "FACESITE_SELF_STOP_IDLE": str(settings.FACESITE_SELF_STOP_IDLE),
        **SINGLE_THREAD_ENVIRONMENT,
    }


def render_boot_env_lines(environment: dict[str, str], env_file: str) -> tuple[str, str, str]:
    """The heredoc that writes `environment` to `env_file`: (start line, KEY=value lines, end
    line). Refuses what the env file could not carry exactly."""
    lines = []
    for key, value in environment.items():
        if not _KEY.fullmatch(key):
            raise ValueError(f"not an environment variable name: {key!r}")
        if not _VALUE.fullmatch(value):
            raise ValueError(f"{key}={value!r}: the worker env file cannot carry this value")
        lines.append(f"{key}={value}")
    return f"cat > {env_file} <<'{_HEREDOC_END}'", "\n".join(lines), _HEREDOC_END


def render_boot_script(environment: dict[str, str]) -> str:
    """The boot script for `environment`; refuses what the env file could not carry exactly."""
    heredoc_start, env_lines, heredoc_end = render_boot_env_lines(environment, ENV_FILE)
    script = render_template(
        "boot.sh",
        heredoc_start=heredoc_start,
        env_lines=env_lines,
        heredoc_end=heredoc_end,
        env_file=ENV_FILE,
        worker_unit=WORKER_UNIT,
    )
    if len(script.encode()) > USER_DATA_LIMIT:
        raise ValueError(f"the boot script is {len(script.encode())} bytes, over EC2's 16 KB")
    return script


def render_template(name: str, **values: object) -> str:
    """A file of ami/image/templates with its ${names} filled in; a missing value is an error."""
    return Template((TEMPLATES / name).read_text()).substitute(values)


def worker_user_data() -> str:
    """The user data the scaler launches app-tier instances with."""
    return render_boot_script(worker_environment())


def parse_user_data(script: str) -> dict[str, str]:
    """The worker environment a boot script writes: the inverse of `render_boot_script`."""
    lines = script.splitlines()
    try:
        start = lines.index(_HEREDOC_START)
        end = lines.index(_HEREDOC_END, start + 1)
    except ValueError:
        raise ValueError("not a facesite boot script: no worker environment in it") from None
    environment: dict[str, str] = {}
    for line in lines[start + 1 : end]:
        key, separator, value = line.partition("=")
        if not separator or not _KEY.fullmatch(key) or not _VALUE.fullmatch(value):
            raise ValueError(f"malformed line in the worker environment: {line!r}")
        environment[key] = value
    return environment
