"""The local AWS emulator: moto's services behind a keep-alive server, with two of moto's
per-request costs taken out and its memory bounded to the state it serves.

Every S3, SQS and EC2 call of the local stack is served by this one Python process, so its
cost per call bounds the whole system's throughput (`python -m bench.emulator` measures it):

- moto's own server (werkzeug's) closes the connection after every answer, so every AWS call
  of every process opened a new TCP connection and the server started a thread for it; AWS
  keeps connections alive, and so does gunicorn's threaded worker, which serves moto's WSGI
  application here. Measured on this machine (S3 put and get, SQS send, receive and delete,
  1 and 20 client threads): 0.2-0.3 ms less of the emulator's CPU a call, 0.1 ms less of the
  client's, 20% less wall time.

- moto's SQS reads the clock through datetime arithmetic once or twice for every message a
  queue holds, on every send, receive and attribute read: with many uploads waiting the
  emulator, not the workers, set the pace. The same epoch time from `time.time()` is an order
  of magnitude cheaper.
- moto's queue attributes are computed whole, counting every message of the queue three times
  (visible, in flight, delayed), and moto computes them three times for each message a receive
  returns, only to read the queue's retention period, and three times for each attribute a
  GetQueueAttributes names. Here a receive reads the retention period itself, and
  GetQueueAttributes computes them once: with 1,000 messages waiting a receive took 18 ms of
  the emulator's one interpreter, during which every other AWS call of the stack waited.
- Every request lists moto's package directory (a `stat` per service) to route itself; the
  directory does not change while the server runs, so it is listed once.

It runs for as long as the stack does, so what it keeps per request must not grow with the
requests (`python -m bench.soak` measures it):

- moto appends every model object it ever creates to a list on its class (`instances_tracked`,
  read only by the `/moto-api/data.json` dump and a reset), so nothing is ever freed: every SQS
  message, every copy of it made for each receive, every S3 object and each one's ACL objects.
  The emulator does not track them; the dump is empty, and a reset still empties every backend.
- moto keeps every S3 object's bytes in memory; here they are files in a temporary folder,
  removed when the emulator stops, or by the next emulator after a SIGKILL
  (ami/local/disk_bodies.py).
- moto's server runs Flask in debug mode, where every request with a body that is not a form
  gets a new class whose closure holds the request: a reference cycle per S3 put that only
  the collector's rare full collections free, so the memory of thousands of requests (their
  bodies, headers, environ) is held in between. That debug helper (a clearer KeyError for
  forms sent without their encoding, which moto never reads) is left out.
- moto's record of each S3 object (besides its bytes) took ~3.5 KB: 35 attributes in a
  dictionary of its own, repeated strings, an empty tag set. It is kept in slots with its
  repeated values shared, ~1.6 KB (ami/local/compact_s3.py).
- moto's SQS queues kept every receipt handle of every deleted message for ever, to let a
  repeated delete succeed; they are kept until they expire with their visibility timeout, as
  on SQS, then forgotten (ami/local/sqs_handles.py).

gunicorn forks the one process that serves (its worker) from a small master that only watches
it. The worker holds every emulated service's state, so it must not be replaced by a fresh,
empty one the way gunicorn replaces a web worker: when it dies, the master stops too, and the
stack sees the emulator stop. No request timeout either: a long poll holds its request 20 s.

None of these changes what the emulated services answer, but for a second delete of an SQS
message after its handle expired: refused, as SQS may refuse it. `command()` starts it. With
`FACESITE_EMULATOR_REALISM=aws` it also answers with AWS's timing and eventual consistency
(ami/local/realism.py); with `FACESITE_EMULATOR_COUNT_CALLS=1` it counts the calls it serves
(ami/local/call_counts.py).
"""

import argparse
import logging
import os
import shutil
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import flask
import flask.debughelpers
import moto.backends
import moto.s3.models
import moto.sqs.models
from gunicorn.app.base import BaseApplication
from gunicorn.arbiter import Arbiter
from gunicorn.errors import HaltServer
from gunicorn.workers.base import Worker
from moto.core import utils as moto_utils
from moto.core.common_models import BaseModel
from moto.moto_server.werkzeug_app import DomainDispatcherApplication, create_backend_app
from moto.sqs.exceptions import InvalidAttributeName
from moto.sqs.models import Message, SQSBackend

from ami.local import compact_s3, sqs_handles
from ami.local.call_counts import CallCounter
from ami.local.disk_bodies import DiskBodies
from facesite import memory

if TYPE_CHECKING:
    from facesite.config import FacesiteConfig


def unix_time(dt: datetime | None = None) -> float:
    """Seconds since the epoch, as moto's `unix_time` returns them."""
    return time.time() if dt is None else moto_utils.unix_time(dt)


def unix_time_millis(dt: datetime | None = None) -> float:
    """Milliseconds since the epoch, as moto's `unix_time_millis` returns them."""
    return time.time() * 1000.0 if dt is None else moto_utils.unix_time_millis(dt)


# The emulator's S3 bodies folder in the temporary directory: this, its pid, a dash, a suffix.
BODIES_PREFIX = "facesite-emulator-s3-"


def untracked_new(cls: type[BaseModel], *args: object, **kwargs: object) -> BaseModel:
    """`BaseModel.__new__` without adding the instance to its class's `instances_tracked`."""
    return super(BaseModel, cls).__new__(cls)


def files_unchanged(request: flask.Request) -> None:
    """Stands in for Flask's debug-mode helper that gives a request's `files` a class of its own."""


def running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def remove_orphaned_bodies(temp_dir: Path) -> None:
    """Remove the S3 bodies folders (`<BODIES_PREFIX><pid>-...`) of emulators no longer running:
    one that was killed (SIGKILL) had no chance to remove its own."""
    for folder in temp_dir.glob(f"{BODIES_PREFIX}*-*"):
        pid = folder.name.removeprefix(BODIES_PREFIX).split("-", 1)[0]
        if pid.isdigit() and not running(int(pid)):
            shutil.rmtree(folder, ignore_errors=True)


def install_memory_bounds(bodies_dir: Path) -> None:
    """Apply the memory changes above to this process's moto, S3 bodies in `bodies_dir`."""
    BaseModel.__new__ = staticmethod(untracked_new)
    moto.s3.models.tempfile = DiskBodies(bodies_dir)
    # flask.wrappers imports it from the module at each call.
    flask.debughelpers.attach_enctype_error_multidict = files_unchanged
    compact_s3.install()
    sqs_handles.install()


def retained(backend: SQSBackend, queue_name: str, message: Message) -> bool:
    """Whether `message` is still inside its queue's retention period (moto's
    `is_message_valid_based_on_retention_period`, without computing every queue attribute)."""
    retention_seconds = backend.get_queue(queue_name).message_retention_period
    return message.sent_timestamp / 1000 + retention_seconds > unix_time()


def queue_attributes(
    backend: SQSBackend, queue_name: str, attribute_names: list[str]
) -> dict[str, Any]:
    """moto's `get_queue_attributes`, computing the queue's attributes once, not three times a
    name."""
    queue = backend.get_queue(queue_name)
    if not attribute_names:
        return {}
    known = {"All", *queue.BASE_ATTRIBUTES, *queue.FIFO_ATTRIBUTES, *queue.KMS_ATTRIBUTES}
    for name in attribute_names:
        if name not in known:
            raise InvalidAttributeName(name)
    current = queue.attributes
    if "All" in attribute_names:
        return current
    return {name: current[name] for name in attribute_names if current.get(name) is not None}


def install_speedups() -> None:
    """Apply the changes of moto's speed above to this process's moto."""
    # moto's SQS imports the clock functions by name, so its module's names are replaced.
    moto.sqs.models.unix_time = unix_time
    moto.sqs.models.unix_time_millis = unix_time_millis
    SQSBackend.is_message_valid_based_on_retention_period = retained
    SQSBackend.get_queue_attributes = queue_attributes
    moto_modules = tuple(moto.backends.list_of_moto_modules())
    moto.backends.list_of_moto_modules = lambda: moto_modules


def command(port: int) -> list[str]:
    """The command line of an emulator serving on 127.0.0.1:`port` (run from the repository's
    root: it imports facesite's configuration)."""
    return [sys.executable, "-m", "ami.local.emulator", "-H", "127.0.0.1", "-p", str(port)]


def install_realism(settings: "FacesiteConfig") -> None:
    """AWS's timing, when the configuration asks for it (FACESITE_EMULATOR_REALISM=aws)."""
    from ami.local import realism

    if settings.emulator_realism == "aws":
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
        realism.install(
            realism.configured(
                settings.emulator_time_scale,
                settings.emulator_throttle_rate,
                settings.emulator_sqs_count_lag,
                settings.emulator_seed,
            )
        )


def remove_bodies_of(pid: int, temp_dir: Path) -> None:
    """Remove the S3 bodies folder of the emulator process `pid`."""
    for folder in temp_dir.glob(f"{BODIES_PREFIX}{pid}-*"):
        shutil.rmtree(folder, ignore_errors=True)


def stop_with_the_worker(arbiter: Arbiter, worker: Worker) -> None:
    """gunicorn's `child_exit` hook, in the master: a serving worker that dies takes the state
    of every emulated service with it, so the master stops instead of starting an empty one.
    Its bodies folder goes with it either way."""
    remove_bodies_of(worker.pid, Path(tempfile.gettempdir()))
    # The arbiter closes its listeners before it stops its workers: still listening, it did not
    # ask this one to go.
    if arbiter.LISTENERS:
        raise HaltServer(f"the emulator's worker (pid {worker.pid}) died with its state", 1)


def server_settings(host: str, port: int) -> dict[str, object]:
    """gunicorn's settings for the emulator."""
    return {
        "bind": f"{host}:{port}",
        # One process: it holds the state.
        "workers": 1,
        "worker_class": "gthread",
        # Enough for every long poll of every queue consumer at once (each holds a thread for up
        # to 20 s) besides the calls in flight; with FACESITE_EMULATOR_REALISM=aws every call
        # also waits in its thread for AWS's latency.
        "threads": 256,
        "worker_connections": 4096,
        # Clients keep their pooled connections; botocore retries on one closed meanwhile.
        "keepalive": 60,
        "timeout": 0,
        # Stopping, a long poll in flight is not waited for.
        "graceful_timeout": 1,
        "child_exit": stop_with_the_worker,
        # Nothing drives it at run time (gunicornc), and its default path in the home folder is
        # shared by every gunicorn of the user: the web tier's and other emulators'.
        "control_socket_disable": True,
    }


class EmulatorServer(BaseApplication):
    """moto's WSGI application (every service, routed by host and path, as moto's own server
    routes them) served by gunicorn."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        super().__init__()

    def load_config(self) -> None:
        for name, value in server_settings(self.host, self.port).items():
            self.cfg.set(name, value)

    def load(self) -> DomainDispatcherApplication | CallCounter:
        """Set up the serving worker, after gunicorn forked it: the patches, its threads (the
        memory tracer's, realism's) and its S3 bodies folder are this process's."""
        from facesite import config

        settings = config.load()
        memory.limit_malloc_arenas()
        memory.start_tracing("emulator")
        install_speedups()
        install_realism(settings)
        bodies_dir = tempfile.mkdtemp(prefix=f"{BODIES_PREFIX}{os.getpid()}-")
        install_memory_bounds(Path(bodies_dir))
        app = DomainDispatcherApplication(create_backend_app)
        if settings.emulator_count_calls:
            return CallCounter(app)
        return app


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="The local AWS emulator.")
    parser.add_argument("-H", "--host", default="127.0.0.1")
    parser.add_argument("-p", "--port", type=int, required=True)
    options = parser.parse_args(argv)
    # The ~1,300 public AMIs moto loads by default serve nothing here and cost seconds.
    os.environ.setdefault("MOTO_EC2_LOAD_DEFAULT_AMIS", "false")
    # A killed emulator's worker had no chance to remove its bodies folder (a killed master's
    # worker exits, and removes none either): the next emulator removes them.
    remove_orphaned_bodies(Path(tempfile.gettempdir()))
    EmulatorServer(options.host, options.port).run()


if __name__ == "__main__":
    main()
