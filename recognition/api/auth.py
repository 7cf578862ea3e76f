"""Who may call the API: a key (`Authorization: Bearer <key>` or `X-API-Key: <key>`) with the
scope the endpoint needs, or a staff member's admin session (the page at `/` uses one when no
key is configured for it). A key's calls are counted against its per-minute rate limit.

Each ninja auth callable returns the caller, or None to let the next one try; when none
accepts, ninja answers 401. A known key without the scope is refused with 403 at once, and an
over-limit key with 429 and Retry-After.
"""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.http import HttpRequest
from ninja.security import APIKeyCookie, APIKeyHeader, HttpBearer
from ninja.utils import check_csrf

from apikeys.keys import find_key, record_use
from apikeys.models import ApiKey
from recognition.api.errors import ApiError

RECOGNIZE = ApiKey.Scope.RECOGNIZE
MANAGE = ApiKey.Scope.MANAGE


def admit(key: ApiKey | None, scope: str) -> ApiKey | None:
    """The key if it may make this call now; raises ApiError for a known key that may not."""
    if key is None:
        return None
    if not key.allows(scope):
        raise ApiError(
            403,
            "forbidden",
            f"This key has the '{key.scope}' scope; this call needs '{scope}'.",
        )
    use = record_use(key, settings.FACESITE_API_RATE_LIMIT)
    if not use.allowed:
        raise ApiError(
            429,
            "rate_limited",
            f"This key may make {use.limit} calls a minute; try again in {use.retry_after} s.",
            headers={"Retry-After": str(use.retry_after)},
        )
    return key


class BearerKey(HttpBearer):
    def __init__(self, scope: str) -> None:
        super().__init__()
        self.scope = scope

    def authenticate(self, request: HttpRequest, token: str) -> ApiKey | None:
        return admit(find_key(token.strip()), self.scope)


class HeaderKey(APIKeyHeader):
    param_name = "X-API-Key"

    def __init__(self, scope: str) -> None:
        super().__init__()
        self.scope = scope

    def authenticate(self, request: HttpRequest, key: str | None) -> ApiKey | None:
        return admit(find_key((key or "").strip()), self.scope)


class StaffSession(APIKeyCookie):
    """A staff member logged in to the admin; unsafe methods need Django's CSRF token (the page
    sends it as X-CSRFToken). Staff sessions are not rate limited."""

    param_name = settings.SESSION_COOKIE_NAME

    def __init__(self) -> None:
        # CSRF is checked below, only once the session is known to be staff: a call with no
        # credentials at all must get 401, not a CSRF refusal.
        super().__init__(csrf=False)

    def authenticate(self, request: HttpRequest, key: str | None) -> Any:
        user = getattr(request, "user", None)
        if not key or user is None or not (user.is_authenticated and user.is_staff):
            return None
        if request.method not in ("GET", "HEAD", "OPTIONS") and check_csrf(request) is not None:
            raise ApiError(403, "forbidden", "The CSRF token is missing or wrong.")
        return user


def needs(scope: str) -> list:
    """The auth callables of an endpoint that needs ``scope``."""
    return [BearerKey(scope), HeaderKey(scope), StaffSession()]
