"""Exponential backoff with jitter for the worker's own retry loops (delivering a result,
checking whether to stop its instance).

botocore already retries each AWS call's transient errors (facesite.aws.clients); these loops
cover what it gives up on, at a pace that does not hammer a service that keeps failing.
"""

import logging
import random
import time
from collections.abc import Callable
from typing import TypeVar

logger = logging.getLogger(__name__)

T = TypeVar("T")

# 2**30 times any sane first pause is beyond every cap: a bound that keeps the float finite.
_MAX_DOUBLINGS = 30


def backoff_seconds(
    failures: int, first: float, cap: float, draw: Callable[[], float] = random.random
) -> float:
    """The pause after `failures` (>= 1) failures in a row: `first` doubled for each failure
    after the first, at most `cap`, times a random factor in [0.5, 1) so that processes failing
    together spread their next attempts out."""
    ceiling = min(cap, first * 2 ** min(failures - 1, _MAX_DOUBLINGS))
    return ceiling * (0.5 + draw() / 2)


def retried(
    action: Callable[[], T],
    what: str,
    attempts: int,
    first: float,
    cap: float,
    sleep: Callable[[float], None] = time.sleep,
) -> T:
    """`action()`, tried up to `attempts` times with backoff between tries; the last try's
    error is raised."""
    attempt = 1
    while True:
        try:
            return action()
        except Exception as error:
            if attempt >= attempts:
                raise
            pause = backoff_seconds(attempt, first, cap)
            logger.warning(
                "%s failed (attempt %d of %d), retrying in %.1f s: %s",
                what,
                attempt,
                attempts,
                pause,
                error,
            )
            sleep(pause)
            attempt += 1
