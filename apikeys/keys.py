"""Creating, finding and metering API keys.

A key is 32 random bytes (URL-safe base64) behind a short marker, `fsk_`. Only its SHA-256 is
stored: the key has 256 bits of entropy, so a fast hash is as safe as a slow one and keeps the
per-request lookup to one indexed query.
"""

from __future__ import annotations

import hashlib
import math
import secrets
import time
from dataclasses import dataclass

from django.db import transaction
from django.db.models import Case, F, Value, When
from django.utils import timezone

from apikeys.models import ApiKey

MARKER = "fsk_"
PREFIX_LENGTH = 12  # the marker and 8 characters of the key: shown in the admin
WINDOW_SECONDS = 60


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def create_key(name: str, scope: str, rate_limit: int | None = None) -> tuple[ApiKey, str]:
    """A new key row and the key itself, which is not stored and cannot be shown again."""
    if scope not in ApiKey.Scope.values:
        raise ValueError(f"unknown scope {scope!r}: one of {', '.join(ApiKey.Scope.values)}")
    key = MARKER + secrets.token_urlsafe(32)
    row = ApiKey.objects.create(
        name=name,
        scope=scope,
        prefix=key[:PREFIX_LENGTH],
        key_hash=hash_key(key),
        rate_limit=rate_limit,
    )
    return row, key


def find_key(key: str) -> ApiKey | None:
    """The active key row for this key; None for an unknown or revoked key."""
    if not key or len(key) > 200:
        return None
    return ApiKey.objects.filter(key_hash=hash_key(key), revoked_at__isnull=True).first()


@dataclass(frozen=True)
class Use:
    calls: int  # calls in the current window, this one included
    limit: int
    retry_after: int  # seconds until the window ends

    @property
    def allowed(self) -> bool:
        return self.calls <= self.limit


def record_use(key: ApiKey, default_limit: int, now: float | None = None) -> Use:
    """Count one call of ``key`` in the current one-minute window and stamp its last use.

    One UPDATE does the counting (SQL evaluates every right-hand side against the old row, so
    a new window restarts at 1); reading the count back in the same transaction sees exactly
    this call's update, since the row stays locked until commit (SQLite's IMMEDIATE
    transactions take the write lock up front, PostgreSQL's UPDATE takes the row lock).
    """
    now = time.time() if now is None else now
    window = int(now // WINDOW_SECONDS)
    with transaction.atomic():
        ApiKey.objects.filter(pk=key.pk).update(
            window_calls=Case(
                When(window=window, then=F("window_calls") + 1),
                default=Value(1),
            ),
            window=window,
            last_used_at=timezone.now(),
        )
        calls = ApiKey.objects.values_list("window_calls", flat=True).get(pk=key.pk)
    limit = key.rate_limit or default_limit
    retry_after = max(1, math.ceil((window + 1) * WINDOW_SECONDS - now))
    return Use(calls=calls, limit=limit, retry_after=retry_after)
