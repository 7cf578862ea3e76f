"""API keys: stored as a SHA-256 hash (the key itself is shown once, at creation), with a scope,
the last time each was used, and the per-minute counter the rate limit reads."""

from django.db import models


class ApiKey(models.Model):
    class Scope(models.TextChoices):
        RECOGNIZE = "recognize", "recognize (recognize, detect, verify, read subjects)"
        MANAGE = "manage", "manage (everything)"

    name = models.CharField(max_length=100)
    scope = models.CharField(max_length=16, choices=Scope.choices, default=Scope.RECOGNIZE)
    # The first characters of the key, so a key can be recognised in the admin without storing
    # it; the hash is what authenticates.
    prefix = models.CharField(max_length=16, db_index=True)
    key_hash = models.CharField(max_length=64, unique=True)
    # Calls per minute; null = FACESITE_API_RATE_LIMIT.
    rate_limit = models.PositiveIntegerField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    last_used_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)
    # The fixed rate-limit window this key was last counted in (minutes since the epoch), and
    # its calls in that window: kept in the database so every web process and thread shares it.
    window = models.BigIntegerField(default=0)
    window_calls = models.PositiveIntegerField(default=0)

    class Meta:
        ordering = ["name", "-created_at"]
        verbose_name = "API key"

    def __str__(self) -> str:
        return f"{self.name} ({self.scope}, {self.prefix}…)"

    @property
    def is_active(self) -> bool:
        return self.revoked_at is None

    def allows(self, scope: str) -> bool:
        """`manage` can do everything; `recognize` only what needs the recognize scope."""
        return self.scope == self.Scope.MANAGE or self.scope == scope
