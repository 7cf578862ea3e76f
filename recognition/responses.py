"""The web tier's side of the response queue.

Every gunicorn process runs a consumer that long-polls the response queue in batches, completes
the history rows and wakes the requests waiting in this process. Any process may read any
result, so a request waiting in another process is woken by a sweeper that looks up, in one
query, which of this process's waiting requests another process has completed.
"""

import logging
import threading
import time
from datetime import UTC, datetime

from django.conf import settings
from django.db import close_old_connections

from facesite import aws
from recognition.models import UploadRequest
from recognition.results import Result

logger = logging.getLogger(__name__)


class Waiters:
    """Requests of this process waiting for their result, by request id."""

    def __init__(self) -> None:
        self._events: dict[str, threading.Event] = {}
        self._lock = threading.Lock()

    def register(self, request_id: str) -> threading.Event:
        event = threading.Event()
        with self._lock:
            self._events[request_id] = event
        return event

    def discard(self, request_id: str) -> None:
        with self._lock:
            self._events.pop(request_id, None)

    def wake(self, request_id: str) -> None:
        with self._lock:
            event = self._events.get(request_id)
        if event is not None:
            event.set()

    def pending(self) -> list[str]:
        with self._lock:
            return [rid for rid, event in self._events.items() if not event.is_set()]


waiters = Waiters()


def _timestamp(epoch: float | None) -> datetime | None:
    return datetime.fromtimestamp(epoch, tz=UTC) if epoch is not None else None


def record_result(result: Result) -> bool:
    """Complete the request's history row; False when it was already complete (a redelivery)."""
    if result.status == 200:
        status = UploadRequest.Status.DONE
    elif result.status == 422:
        status = UploadRequest.Status.NO_FACE
    else:
        status = UploadRequest.Status.FAILED
    updated = (
        UploadRequest.objects.filter(pk=result.request_id)
        .exclude(status__in=UploadRequest.FINAL_STATUSES)
        .update(
            status=status,
            name=result.name,
            distance=result.distance,
            faces=result.faces,
            result_status=result.status,
            error=result.error,
            worker_instance_id=result.instance,
            started_at=_timestamp(result.started),
            finished_at=_timestamp(result.finished),
        )
    )
    return bool(updated)


class ResponseConsumer(threading.Thread):
    """Long-polls the response queue; deletes each message once its row is recorded."""

    def __init__(self, stop: threading.Event, name: str = "response-consumer") -> None:
        super().__init__(name=name, daemon=True)
        self.stop = stop

    def run(self) -> None:
        sqs = aws.client("sqs")
        while not self.stop.is_set():
            try:
                messages = sqs.receive_message(
                    QueueUrl=settings.RESPONSE_QUEUE_URL,
                    MaxNumberOfMessages=10,
                    WaitTimeSeconds=settings.FACESITE_SQS_WAIT_SECONDS,
                ).get("Messages", [])
                if messages:
                    self.handle(messages)
            except Exception:
                logger.exception("response consumer: receive failed; retrying in 1 s")
                self.stop.wait(1.0)
            finally:
                close_old_connections()

    def handle(self, messages: list[dict]) -> None:
        done = []
        for message in messages:
            try:
                result = Result.from_json(message["Body"])
            except (ValueError, TypeError):
                logger.error("response consumer: dropping malformed message %r", message["Body"])
            else:
                record_result(result)
                waiters.wake(result.request_id)
            done.append({"Id": str(len(done)), "ReceiptHandle": message["ReceiptHandle"]})
        # Deleted only after the rows are written: a process that dies before this point leaves
        # the results to come back after the visibility timeout, and recording is idempotent.
        aws.client("sqs").delete_message_batch(QueueUrl=settings.RESPONSE_QUEUE_URL, Entries=done)


class Sweeper(threading.Thread):
    """Wakes this process's waiting requests whose result another process recorded."""

    def __init__(self, stop: threading.Event, interval: float) -> None:
        super().__init__(name="response-sweeper", daemon=True)
        self.stop = stop
        self.interval = interval

    def run(self) -> None:
        while not self.stop.wait(self.interval):
            pending = waiters.pending()
            if not pending:
                continue
            try:
                finished = UploadRequest.objects.filter(
                    pk__in=pending, status__in=UploadRequest.FINAL_STATUSES
                ).values_list("pk", flat=True)
                for request_id in finished:
                    waiters.wake(str(request_id))
            except Exception:
                logger.exception("response sweeper failed; retrying")
            finally:
                close_old_connections()


_stop = threading.Event()
_threads: list[threading.Thread] = []
_started_lock = threading.Lock()


def start_consumers() -> None:
    """Start this process's consumers and sweeper (once; gunicorn calls it in each worker)."""
    with _started_lock:
        if _threads:
            return
        _stop.clear()
        for index in range(settings.FACESITE_RESPONSE_CONSUMERS):
            _threads.append(ResponseConsumer(_stop, name=f"response-consumer-{index}"))
        _threads.append(Sweeper(_stop, settings.FACESITE_SWEEP_INTERVAL))
        for thread in _threads:
            thread.start()
        logger.info("response consumers started (%d)", settings.FACESITE_RESPONSE_CONSUMERS)


def stop_consumers(timeout: float = 5.0) -> None:
    with _started_lock:
        _stop.set()
        deadline = time.monotonic() + timeout
        for thread in _threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        _threads.clear()


def consumers_alive() -> bool:
    return bool(_threads) and all(thread.is_alive() for thread in _threads)
