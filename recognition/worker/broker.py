"""The worker's broker transport: kombu's SQS transport, using the process's shared SQS client
and deleting acknowledged messages in batches.

kombu builds its SQS client from a boto3 session of its own, which parses botocore's service
models again: about half the CPU a worker forked by the local runner spends before it consumes,
and seconds of a cold boot on a small instance. Its client also has botocore's default retry
policy instead of facesite's one (facesite.aws.clients). So when the broker URL names the
endpoint, region and credentials facesite's own clients use, the channel takes the shared client
(a broker URL configured elsewhere gets kombu's client, as before).

kombu also deletes each acknowledged message with a DeleteMessage of its own: one of the
worker's five AWS calls per task, each costing about as much CPU as the others. Here an
acknowledgement releases the message's prefetch slot at once, so the next receive is not held
up, and its deletion waits, ACK_DELETE_DELAY_SECONDS at most or until ten are waiting, to go in
one DeleteMessageBatch. A worker that dies in between has deleted nothing: SQS delivers those
messages again after the visibility timeout, the task runs again with the same outputs and the
web tier ignores the second result, as for any redelivery. Receiving and everything else stay
kombu's. Acknowledging, the timer and closing all run on the event loop's thread (the worker's
pool is solo), so the pending deletions need no lock.
"""

import logging
from typing import Any

from django.conf import settings
from kombu.transport import SQS, virtual

from facesite import aws

logger = logging.getLogger(__name__)

# How long an acknowledged message may wait for its deletion: far inside any visibility timeout
# (so SQS does not deliver it again meanwhile), and short beside the scaler's tick, which counts
# a message not yet deleted as work in flight. A busy worker finishes several tasks in it.
ACK_DELETE_DELAY_SECONDS = 0.2
# SQS's most entries in one DeleteMessageBatch.
MAX_BATCH_ENTRIES = 10


def is_facesites_sqs(endpoint_url: str | None, region: str, access_key_id: str | None) -> bool:
    """Whether kombu's connection settings are those of facesite's shared SQS client."""
    credentials = settings.AWS_CREDENTIALS
    return (
        endpoint_url == settings.AWS_ENDPOINT_URL
        and region == settings.AWS_REGION
        and (access_key_id or None) == (credentials[0] if credentials else None)
    )


class Channel(SQS.Channel):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # Receipt handles of acknowledged messages not yet deleted, by (queue name, queue URL).
        self._acknowledged: dict[tuple[str | None, str], list[str]] = {}
        self._deletion_timer: Any = None  # the event loop's timer entry, once one is due

    def new_sqs_client(
        self,
        region: str,
        access_key_id: str | None,
        secret_access_key: str | None,
        session_token: str | None = None,
    ) -> Any:
        if session_token is None and is_facesites_sqs(self.endpoint_url, region, access_key_id):
            return aws.client("sqs")
        return super().new_sqs_client(region, access_key_id, secret_access_key, session_token)

    def basic_ack(self, delivery_tag: Any, multiple: bool = False) -> None:
        try:
            delivery = self.qos.get(delivery_tag).delivery_info
            queue_url = delivery["sqs_queue"]
            receipt_handle = delivery["sqs_message"]["ReceiptHandle"]
        except KeyError:  # not a message received from SQS: kombu's own bookkeeping
            super().basic_ack(delivery_tag, multiple)
            return
        routing_key = delivery.get("routing_key")
        queue = self.canonical_queue_name(routing_key) if routing_key else None
        virtual.Channel.basic_ack(self, delivery_tag)  # the prefetch slot, without SQS's delete
        handles = self._acknowledged.setdefault((queue, queue_url), [])
        handles.append(receipt_handle)
        if len(handles) >= MAX_BATCH_ENTRIES or self.hub is None:
            self.delete_acknowledged()
        elif self._deletion_timer is None:
            self._deletion_timer = self.hub.call_later(
                ACK_DELETE_DELAY_SECONDS, self.delete_acknowledged
            )

    def delete_acknowledged(self) -> None:
        """Delete every acknowledged message, ten to a DeleteMessageBatch. One that fails to be
        deleted is delivered again after the visibility timeout, so failures are logged, not
        raised (this runs from the event loop's timer)."""
        if self._deletion_timer is not None:
            self._deletion_timer.cancel()  # when ten went first: the next ack starts a new wait
            self._deletion_timer = None
        acknowledged, self._acknowledged = self._acknowledged, {}
        for (queue, queue_url), handles in acknowledged.items():
            for start in range(0, len(handles), MAX_BATCH_ENTRIES):
                batch = handles[start : start + MAX_BATCH_ENTRIES]
                entries = [{"Id": str(i), "ReceiptHandle": h} for i, h in enumerate(batch)]
                try:
                    failed = (
                        self.sqs(queue=queue)
                        .delete_message_batch(QueueUrl=queue_url, Entries=entries)
                        .get("Failed", [])
                    )
                except Exception:
                    logger.exception(
                        "could not delete %d acknowledged messages from %s; SQS will deliver "
                        "them again after the visibility timeout",
                        len(batch),
                        queue_url,
                    )
                    continue
                for failure in failed:
                    logger.warning(
                        "could not delete an acknowledged message from %s (%s: %s); SQS will "
                        "deliver it again after the visibility timeout",
                        queue_url,
                        failure.get("Code"),
                        failure.get("Message"),
                    )

    def close(self) -> None:
        # A warm shutdown acknowledges its last task, then closes the channel.
        self.delete_acknowledged()
        super().close()


class Transport(SQS.Transport):
    Channel = Channel


# How a Celery app names this transport (its broker_transport setting).
TRANSPORT = f"{__name__}:Transport"
