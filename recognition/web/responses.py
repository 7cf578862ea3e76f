"""The web tier's side of the response queue.

Every gunicorn process runs consumers that long-poll the response queue in batches, complete the
history rows and wake the requests waiting in this process. Of the processes on one machine, one
polls at a time (the one holding the machine's lock file; the others stand by and take over if
its process dies), so that one receive under load carries several results. Any process may read
any result: one read for a request waiting elsewhere is passed on, as a datagram, to the wake
socket of the process the request's row names (`reply_to`). The datagram carries the recorded
result, signed with the project's secret key, so that the waiting request answers without
reading its row back; a result too large for one datagram is passed on by its request id alone.
A sweeper that looks up, in one query, which of this process's waiting requests are complete is
the backstop for a datagram that never arrives.

Beside them, dead-letter consumers (also one per machine at a time) read the request queue's
dead-letter queue: a task there was delivered FACESITE_MAX_RECEIVES times without a result, so
its request is recorded as failed (our fault) and woken the same way, instead of waiting for
the reply timeout.
"""

import contextlib
import fcntl
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

from django.conf import settings
from django.core import signing
from django.db import connection, transaction

from facesite import aws
from recognition import lifecycle
from recognition.messages import ResultMessage, refused, task_request_id
from recognition.models import UploadRequest

logger = logging.getLogger(__name__)

# After a receive that returned fewer than ten results, a response consumer rests this long
# for each request waiting in its process, up to the maximum.
RESULT_LINGER_PER_WAITER_SECONDS = 0.01
RESULT_LINGER_MAX_SECONDS = 0.2
# Recorded messages are deleted ten at a time, or once the oldest has waited this long (or the
# queue has run dry): far inside the visibility timeout, after which SQS would hand them out
# again (harmlessly: recording is idempotent).
DELETE_DELAY_SECONDS = 1.0
# How often a consumer standing by tries to take the machine's turn to poll: how soon another
# process takes over from one that died.
STANDBY_RETRY_SECONDS = 0.5
# A consumer holding the turn marks its progress every round (a receive waits at most 20 s, and
# botocore gives up on one after 30 s): one that has not for this long is taken to be stuck, and
# the consumers standing by poll as well.
STALLED_TURN_SECONDS = 60.0
# How long a dead-letter consumer rests between receives.
DEAD_LETTER_PAUSE_SECONDS = 2.0
# A wake datagram carrying its result stays within this size (a request id alone otherwise):
# well inside UDP's 64 KiB, and one or a few packets on a data-centre network.
MAX_WAKE_DATAGRAM_BYTES = 8192


def _wake_signer() -> signing.Signer:
    # Made per use: it reads the secret key (and its fallbacks, while keys rotate) from settings.
    return signing.Signer(salt="facesite.wake")


class Waiter(threading.Event):
    """A request waiting in this process; woken with its row's completed fields when the
    consumer that recorded its result runs in this process, so that it need not read them back."""

    completed: dict[str, Any] | None = None


class Waiters:
    """Requests of this process waiting for their result, by request id."""

    def __init__(self) -> None:
        self._waiters: dict[str, Waiter] = {}
        self._lock = threading.Lock()

    def register(self, request_id: str) -> Waiter:
        waiter = Waiter()
        with self._lock:
            self._waiters[request_id] = waiter
        return waiter

    def discard(self, request_id: str) -> None:
        with self._lock:
            self._waiters.pop(request_id, None)

    def wake(self, request_id: str, completed: dict[str, Any] | None = None) -> bool:
        """Wake the request if it waits in this process, handing it the fields its row was
        completed with when known; False when it doesn't wait here."""
        with self._lock:
            waiter = self._waiters.get(request_id)
        if waiter is None:
            return False
        if completed is not None and not waiter.is_set():
            waiter.completed = completed
        waiter.set()
        return True

    def __len__(self) -> int:
        return len(self._waiters)

    def pending(self) -> list[str]:
        with self._lock:
            return [rid for rid, waiter in self._waiters.items() if not waiter.is_set()]


waiters = Waiters()


def _timestamp(epoch: float | None) -> datetime | None:
    return datetime.fromtimestamp(epoch, tz=UTC) if epoch is not None else None


def completed_fields(result: ResultMessage) -> dict[str, Any]:
    """The history row's fields a result completes: written by `record_result` and handed to
    the request waiting in this process (one mapping for both)."""
    return {
        "status": lifecycle.history_status(result.outcome),
        "name": result.name,
        "distance": result.distance,
        "faces": result.faces,
        "result_status": lifecycle.http_status(result.outcome),
        "error": result.error,
        "outcome": result.outcome,
        "result": result.payload,
        "worker_instance_id": result.instance,
        "started_at": _timestamp(result.started),
        "finished_at": _timestamp(result.finished),
    }


def record_result(result: ResultMessage) -> dict[str, Any] | None:
    """Complete the request's history row; the fields written, or None when it was already
    complete (a redelivery) or is unknown."""
    fields = completed_fields(result)
    updated = (
        UploadRequest.objects.filter(pk=result.request_id)
        .exclude(status__in=UploadRequest.FINAL_STATUSES)
        .update(**fields)
    )
    return fields if updated else None


# What recording one message gives: the result recorded (it names the request to wake) and the
# fields its row was completed with (None when the row was complete already), or None for a
# message dropped.
Recorded = tuple[ResultMessage, dict[str, Any] | None] | None


def wake_datagram(result: ResultMessage, completed: dict[str, Any] | None) -> bytes:
    """What tells another process that `result`'s request is complete: the signed result when
    it completed the row and fits MAX_WAKE_DATAGRAM_BYTES, else the request id."""
    if completed is not None:
        signed = _wake_signer().sign(result.to_json()).encode()
        if len(signed) <= MAX_WAKE_DATAGRAM_BYTES:
            return signed
    return result.request_id.encode()


def woken(datagram: bytes) -> tuple[str, dict[str, Any] | None]:
    """The request a wake datagram names and, when it carries a result signed with this
    project's key, the fields that result completed its row with; ("", None) for a datagram
    that is neither (forged, damaged or cut short)."""
    text = datagram.decode("utf-8", errors="replace")
    if not text.startswith("{"):
        return text, None
    try:
        result = ResultMessage.from_json(_wake_signer().unsign(text))
    except (signing.BadSignature, ValueError, TypeError):
        logger.warning("ignoring a wake datagram that is not a signed result")
        return "", None
    return result.request_id, completed_fields(result)


class QueueConsumer(threading.Thread):
    """Long-polls one queue in batches: records each message in its request's history row,
    wakes the request, and deletes the messages in batches once their rows are written."""

    def __init__(self, stop: threading.Event, name: str) -> None:
        super().__init__(name=name, daemon=True)
        self.stop = stop
        self.sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        # The lock file of the machine's turn to poll, while this consumer holds it.
        self.turn: IO[str] | None = None
        # Receipt handles of messages recorded but not yet deleted, and when the first came.
        self.recorded: list[str] = []
        self.recorded_since = 0.0

    def queue_url(self) -> str:
        raise NotImplementedError

    def record(self, body: str) -> Recorded:
        """Record one message (see `Recorded`)."""
        raise NotImplementedError

    def pause_after(self, received: int) -> float:
        """Seconds to rest after a receive that returned `received` messages."""
        return 0.0

    @contextlib.contextmanager
    def polling_turn(self) -> Iterator[bool]:
        """Entered once this consumer holds its turn to poll (it gives True), or when it stops
        first (False).

        Two consumers polling one queue split its messages between their receives: with one per
        process, a web machine's response receives carried about 1.5 results each under load,
        and a receive costs as much CPU as recording what it brings. So the consumers of one
        name in the machine's processes hold one lock file, and each name polls once per
        machine. The kernel drops a dead process's lock, and a consumer standing by takes over.
        A holder that lives but is stuck (on a hung database call, say) would hold every result
        of the machine, so the holder marks the file at each round (`mark_progress`), and a
        consumer standing by that sees no mark for STALLED_TURN_SECONDS polls as well, as every
        process did before turns. A lock that cannot be taken for another reason is logged,
        and the consumer polls anyway.
        """
        path = settings.VAR_DIR / f"{settings.FACESITE_PREFIX}-{self.name}.lock"
        try:
            lock = open(path, "a")  # noqa: SIM115 (closed below, or by the with)
        except OSError as error:
            logger.warning("%s: polls without a turn: cannot open %s: %s", self.name, path, error)
            yield True
            return
        with lock:
            while not self.take_turn(lock, path):
                if self.stop.wait(STANDBY_RETRY_SECONDS):
                    yield False
                    return
            try:
                yield True
            finally:
                self.turn = None  # closing the file releases the lock

    def take_turn(self, lock: IO[str], path: Path) -> bool:
        """Whether this consumer may poll now: it holds the lock, the holder is stuck, or the
        lock cannot be taken at all."""
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            stalled = time.time() - os.fstat(lock.fileno()).st_mtime
            if stalled < STALLED_TURN_SECONDS:
                return False
            logger.warning(
                "%s: the consumer holding %s has made no progress for %.0f s: polling as well",
                self.name,
                path,
                stalled,
            )
            return True
        except OSError as error:
            logger.warning("%s: polls without a turn: cannot lock %s: %s", self.name, path, error)
            return True
        self.turn = lock
        self.mark_progress()
        return True

    def mark_progress(self) -> None:
        """Tell the consumers standing by that the holder of the turn is not stuck."""
        if self.turn is not None:
            with contextlib.suppress(OSError):
                os.utime(self.turn.fileno())

    def run(self) -> None:
        with self.sender, self.polling_turn() as polling:
            if polling:
                self.poll()

    def poll(self) -> None:
        sqs = aws.client("sqs")
        while not self.stop.is_set():
            self.mark_progress()
            try:
                messages = sqs.receive_message(
                    QueueUrl=self.queue_url(),
                    MaxNumberOfMessages=10,
                    WaitTimeSeconds=settings.FACESITE_SQS_WAIT_SECONDS,
                ).get("Messages", [])
                if messages:
                    self.handle(messages)
                self.delete_recorded(queue_dry=not messages)
                self.stop.wait(self.pause_after(len(messages)))
            except Exception:
                logger.exception("%s: receive failed; retrying in 1 s", self.name)
                connection.close()  # a broken database connection is opened afresh
                self.stop.wait(1.0)
        with contextlib.suppress(Exception):  # what is left comes back: recorded already
            self.delete_recorded(queue_dry=True)

    def handle(self, messages: list[dict]) -> None:
        # One transaction, one commit, for the batch's rows; the requests are woken after it,
        # when every reader of the database sees their rows complete.
        with transaction.atomic():
            recorded = [self.record(message["Body"]) for message in messages]
        waiting_elsewhere = [
            (result, completed)
            for result, completed in filter(None, recorded)
            if not waiters.wake(result.request_id, completed)
        ]
        if waiting_elsewhere:
            self.pass_on(waiting_elsewhere)
        if not self.recorded:
            self.recorded_since = time.monotonic()
        self.recorded.extend(message["ReceiptHandle"] for message in messages)

    def delete_recorded(self, queue_dry: bool) -> None:
        """Delete the recorded messages when ten are waiting, the oldest has waited
        DELETE_DELAY_SECONDS or the queue is dry. Only recorded ones: a process that dies
        first leaves them to come back after the visibility timeout, and to be recorded again
        (idempotently)."""
        due = queue_dry or time.monotonic() - self.recorded_since >= DELETE_DELAY_SECONDS
        while self.recorded and (due or len(self.recorded) >= 10):
            handles, self.recorded = self.recorded[:10], self.recorded[10:]
            aws.client("sqs").delete_message_batch(
                QueueUrl=self.queue_url(),
                Entries=[{"Id": str(index), "ReceiptHandle": h} for index, h in enumerate(handles)],
            )
            self.recorded_since = time.monotonic()

    def pass_on(self, recorded: list[tuple[ResultMessage, dict[str, Any] | None]]) -> None:
        """Tell the processes these results' requests wait in that their rows are complete."""
        by_id = {result.request_id: (result, completed) for result, completed in recorded}
        rows = (
            UploadRequest.objects.filter(pk__in=list(by_id))
            .exclude(reply_to__in=["", reply_address()])
            .values_list("pk", "reply_to")
        )
        for request_id, address in rows:
            host, _, port = address.rpartition(":")
            try:
                datagram = wake_datagram(*by_id[str(request_id)])
                self.sender.sendto(datagram, (host, int(port)))
            except (OSError, ValueError) as error:
                # The waiting process's sweeper still finds the row complete.
                logger.warning("could not pass on request %s to %s: %s", request_id, address, error)


class ResponseConsumer(QueueConsumer):
    """Reads the workers' results from the response queue."""

    def __init__(self, stop: threading.Event, name: str = "response-consumer") -> None:
        super().__init__(stop, name)

    def queue_url(self) -> str:
        return aws.names().response_queue_url

    def pause_after(self, received: int) -> float:
        # Under load results arrive one at a time, and a receive costs as much CPU as one of a
        # request's own AWS calls. Resting after a partial batch, the longer the more requests
        # wait here, lets the next receive carry several; a request idle alone never waits.
        if not 0 < received < 10:
            return 0.0
        return min(RESULT_LINGER_MAX_SECONDS, RESULT_LINGER_PER_WAITER_SECONDS * len(waiters))

    def record(self, body: str) -> Recorded:
        try:
            result = ResultMessage.from_json(body)
            # Request ids are the history rows' keys, written as str(row.pk) writes them.
            result = result.stamped(request_id=str(uuid.UUID(str(result.request_id))))
        except (ValueError, TypeError):
            logger.error("response consumer: dropping malformed message %r", body)
            return None
        completed = record_result(result)
        logger.info(
            "request %s result %s from %s%s",
            result.request_id,
            result.outcome,
            result.instance or "a worker",
            "" if completed else " (a redelivery: already recorded)",
            extra={"request_id": result.request_id},
        )
        return result, completed


class DeadLetterConsumer(QueueConsumer):
    """Reads the request queue's dead-letter queue: a recognition task there was delivered
    FACESITE_MAX_RECEIVES times without a result, so its request fails, as our fault."""

    def __init__(self, stop: threading.Event, name: str = "dead-letter-consumer") -> None:
        super().__init__(stop, name)

    def queue_url(self) -> str:
        return aws.names().request_dead_letter_queue_url

    def pause_after(self, received: int) -> float:
        # Dead letters are rare and already minutes late on AWS: polling seldom costs nothing.
        return DEAD_LETTER_PAUSE_SECONDS

    def record(self, body: str) -> Recorded:
        try:
            request_id = task_request_id(body)
        except ValueError as error:
            logger.error("dead-letter consumer: dropping %r (%s)", body[:300], error)
            return None
        detail = (
            f"No worker completed the task: it was delivered {settings.FACESITE_MAX_RECEIVES}"
            " times without a result, then moved to the dead-letter queue (see the worker logs"
            " for this request id)."
        )
        result = refused(lifecycle.Outcome.FAILED, detail).stamped(request_id=request_id)
        completed = record_result(result)
        if completed:
            logger.error("request %s failed: its task was dead-lettered", request_id)
        return result, completed


class WakeListener(threading.Thread):
    """Receives the wake datagrams of this process's requests whose result another process
    recorded."""

    def __init__(self, stop: threading.Event, host: str) -> None:
        super().__init__(name="wake-listener", daemon=True)
        self.stop = stop
        self.socket = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.socket.bind((host, 0))
        self.socket.settimeout(0.5)  # how soon the thread notices `stop`
        bound_host, port = self.socket.getsockname()
        self.address = f"{bound_host}:{port}"

    def run(self) -> None:
        with self.socket:
            while not self.stop.is_set():
                try:
                    # Room for the largest datagram UDP carries: a longer one would be cut short.
                    datagram = self.socket.recv(65535)
                except TimeoutError:
                    continue
                request_id, completed = woken(datagram)
                if request_id:
                    waiters.wake(request_id, completed)


class Sweeper(threading.Thread):
    """Wakes this process's waiting requests whose completion it was not told of."""

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
                connection.close()


_stop = threading.Event()
_threads: list[threading.Thread] = []
_started_lock = threading.Lock()
_reply_address = ""


def reply_address() -> str:
    """Where other web processes reach this one's wake socket; "" before `start_consumers`."""
    return _reply_address


def start_consumers() -> None:
    """Start this process's consumers, wake listener and sweeper (once; gunicorn calls it in
    each worker)."""
    global _reply_address
    with _started_lock:
        if _threads:
            return
        _stop.clear()
        listener = WakeListener(_stop, settings.FACESITE_WAKE_HOST)
        _reply_address = listener.address
        _threads.append(listener)
        for index in range(settings.FACESITE_RESPONSE_CONSUMERS):
            _threads.append(ResponseConsumer(_stop, name=f"response-consumer-{index}"))
        for index in range(settings.FACESITE_DEAD_LETTER_CONSUMERS):
            _threads.append(DeadLetterConsumer(_stop, name=f"dead-letter-consumer-{index}"))
        _threads.append(Sweeper(_stop, settings.FACESITE_SWEEP_INTERVAL))
        for thread in _threads:
            thread.start()
        logger.info(
            "response consumers started (%d, dead-letter %d), wake socket %s",
            settings.FACESITE_RESPONSE_CONSUMERS,
            settings.FACESITE_DEAD_LETTER_CONSUMERS,
            _reply_address,
        )


def stop_consumers(timeout: float = 5.0) -> None:
    global _reply_address
    with _started_lock:
        _stop.set()
        deadline = time.monotonic() + timeout
        for thread in _threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        _threads.clear()
        _reply_address = ""


def consumers_alive() -> bool:
    return bool(_threads) and all(thread.is_alive() for thread in _threads)
