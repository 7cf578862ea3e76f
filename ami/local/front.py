"""The web tier's buffering front, nginx, for the local stack, the tests' harness and the
benchmarks: found or installed (Debian's package, with apt-get), configured from
ami/image/templates/nginx-front.conf (the template a real web instance uses too) and run in
the foreground as one more supervised service.

Why a front at all: gunicorn's gthread worker gives each connection a thread once its first
bytes arrive, so clients that dribble their headers one byte at a time hold the threads every
upload needs. nginx reads requests whole, thousands of connections per process on an event
loop, and hands gunicorn only complete ones.
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from ami.image.bootscript import render_template

NGINX_PACKAGE = "nginx"
TEMPLATE = "nginx-front.conf"
# The multipart envelope around the file: the same allowance the upload view makes.
ENVELOPE_BYTES = 64 * 1024
# Beyond the reply timeout, so that a late upload gets Django's 504 (naming the request).
UPSTREAM_SLACK_SECONDS = 30
# Each slow client is one connection; each upload in flight is two (client and upstream).
WORKER_CONNECTIONS = 8192
# A Unix socket's path must fit sockaddr_un (108 bytes with the terminating NUL).
MAX_SOCKET_PATH = 100


class FrontUnavailable(Exception):
    """nginx is not installed and could not be installed; the message says why."""


def find_nginx() -> str | None:
    return shutil.which("nginx") or next(
        (str(path) for path in (Path("/usr/sbin/nginx"),) if path.exists()), None
    )


def ensure_nginx(log_path: Path) -> str:
    """The nginx binary's path, installing Debian's package first when it is missing (as root,
    through apt-get, output to ``log_path``). Raises FrontUnavailable when it can't."""
    found = find_nginx()
    if found:
        return found
    if shutil.which("apt-get") is None:
        raise FrontUnavailable("nginx is not installed and this machine has no apt-get")
    if os.geteuid() != 0:
        raise FrontUnavailable(
            "nginx is not installed and installing it needs root: `sudo apt-get install nginx`"
        )
    # RUNLEVEL=1: Debian's maintainer scripts would otherwise start a system nginx on port 80.
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive", "RUNLEVEL": "1"}
    with open(log_path, "ab") as log:
        for argv in (
            ["apt-get", "update", "-qq"],
            ["apt-get", "install", "-y", "-qq", "--no-install-recommends", NGINX_PACKAGE],
        ):
            try:
                subprocess.run(argv, check=True, env=env, stdout=log, stderr=log, timeout=900)
            except (subprocess.SubprocessError, OSError) as error:
                raise FrontUnavailable(
                    f"installing nginx failed ({' '.join(argv)}: {error}); see {log_path}"
                ) from error
    found = find_nginx()
    if not found:
        raise FrontUnavailable(f"apt-get installed {NGINX_PACKAGE} but no nginx binary was found")
    return found


def upstream_socket(var_dir: Path) -> Path:
    """Where gunicorn listens behind the front: a Unix socket no other stack can collide with
    and nothing off the machine can reach."""
    path = var_dir / "run" / "web.sock"
    if len(str(path)) > MAX_SOCKET_PATH:
        path = Path(tempfile.mkdtemp(prefix="facesite-")) / "web.sock"
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


@dataclass(frozen=True)
class FrontConfig:
    listen: str  # host:port clients connect to
    upstream: Path  # gunicorn's Unix socket
    run_dir: Path  # pid file and nginx's temporary files
    log_dir: Path
    max_upload_bytes: int
    reply_timeout: float
    worker_processes: int = 1
    backlog: int = 4096


def render(config: FrontConfig) -> str:
    # As root, nginx's workers would otherwise switch to `nobody`, who may not reach the
    # socket or the temporary directories this user owns; as another user the directive is
    # ignored, so it is left out.
    user = f"user {pwd.getpwuid(os.geteuid()).pw_name};" if os.geteuid() == 0 else ""
    return render_template(
        TEMPLATE,
        user_directive=user,
        worker_processes=config.worker_processes,
        worker_connections=WORKER_CONNECTIONS,
        max_open_files=2 * WORKER_CONNECTIONS + 1024,
        run_dir=config.run_dir,
        log_dir=config.log_dir,
        max_body_bytes=config.max_upload_bytes + ENVELOPE_BYTES,
        max_upload_mib=config.max_upload_bytes // (1024 * 1024),
        upstream=f"unix:{config.upstream}",
        listen=config.listen,
        backlog=config.backlog,
        reply_timeout_seconds=int(config.reply_timeout) + UPSTREAM_SLACK_SECONDS,
    )


def write_config(config: FrontConfig) -> Path:
    config.run_dir.mkdir(parents=True, exist_ok=True)
    path = config.run_dir / "nginx-front.conf"
    path.write_text(render(config))
    return path


def command(nginx: str, config_path: Path) -> list[str]:
    """nginx in the foreground (the config says `daemon off`), its error log on stderr from the
    first line (`-e`: before the config is read it would open /var/log/nginx/error.log)."""
    return [nginx, "-e", "stderr", "-p", str(config_path.parent), "-c", str(config_path)]
