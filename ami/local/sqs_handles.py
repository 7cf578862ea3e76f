"""The receipt handles of deleted SQS messages, kept until they expire instead of for ever.

moto's SQS queue adds every receipt handle of every message it deletes to a set that never
shrinks (185 letters each, ~0.3 KB with the set's slot), only to answer a second delete of the
same handle: as SQS does, it succeeds and changes nothing. On AWS a receipt handle expires when
its message's visibility timeout ends (then SQS may refuse it as expired: only the most recent
handle of a message in flight is sure to work); so a deleted message's handles are kept until
the end of its last visibility timeout, and forgotten after. A repeated delete within it still
succeeds; one after it is refused, as a handle moto never issued is (ReceiptHandleIsInvalid).
The queues keep a few visibility timeouts' worth of handles, not every one ever deleted.
"""

from __future__ import annotations

import threading
from collections import OrderedDict

from moto.sqs import models as sqs_models
from moto.sqs.models import Queue


def forget_expired(deleted: OrderedDict[str, float], now_millis: float) -> None:
    """Drop the handles whose time has passed, oldest first; `deleted` maps each handle to the
    epoch milliseconds when it expires, in the order they were deleted."""
    # Later deletions mostly expire later: one that does not waits for those before it.
    while deleted and next(iter(deleted.values())) <= now_millis:
        deleted.popitem(last=False)


# The server's threads delete concurrently; this makes each delete whole.
DELETING = threading.Lock()


def delete_message_until_expiry(self: Queue, receipt_handle: str) -> None:
    """`Queue.delete_message`, remembering the deleted message's handles until they expire."""
    with DELETING:
        deleted = vars(self).setdefault("deleted_until", OrderedDict())
        forget_expired(deleted, sqs_models.unix_time_millis())
        if receipt_handle in deleted:
            return  # already deleted: a repeated delete succeeds, as on SQS
        message = next((m for m in self._messages if m.had_receipt_handle(receipt_handle)), None)
        ORIGINAL_DELETE_MESSAGE(self, receipt_handle)  # refuses a handle no message has
        # moto's own record of them, kept for ever, is left empty.
        self.deleted_messages.clear()
        if message is not None:
            for handle in message.all_receipt_handles:
                if handle is not None:  # a message's handle before its first receive
                    deleted[handle] = message.visible_at


ORIGINAL_DELETE_MESSAGE = Queue.delete_message


def install() -> None:
    """Make this process's moto keep deleted messages' receipt handles until they expire."""
    Queue.delete_message = delete_message_until_expiry
