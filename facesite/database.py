"""Django's DATABASES entry from facesite's configuration: SQLite on one machine, PostgreSQL
(psycopg 3) when ``FACESITE_DATABASE_URL`` names a server that several web machines share."""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit


def sqlite_database(path: Path) -> dict[str, Any]:
    return {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": str(path),
        # Many web threads, the response consumers and the scaler write concurrently: WAL lets
        # readers run beside the writer, IMMEDIATE takes the write lock up front (no upgrade
        # deadlocks), and the timeout makes writers queue instead of failing.
        "OPTIONS": {
            "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
            "transaction_mode": "IMMEDIATE",
            "timeout": 30,
        },
        # Each thread keeps its connection: opening one (Django registers its SQL functions
        # on each) costs more than a request's queries. At most one per web thread.
        "CONN_MAX_AGE": None,
    }


def postgres_database(url: str, pool_size: int) -> dict[str, Any]:
    """`postgres://user:password@host:port/name?option=value` as a Django database.

    Query parameters are libpq connection options (sslmode, connect_timeout, ...). Each process
    draws its connections from a psycopg pool of at most `pool_size`: a web process has hundreds
    of threads, and a connection per thread would exhaust the server's max_connections.
    """
    parts = urlsplit(url)
    if parts.scheme not in ("postgres", "postgresql"):
        raise ValueError(f"not a PostgreSQL URL: {parts.scheme}://...")
    name = unquote(parts.path.lstrip("/"))
    if not name:
        raise ValueError("the PostgreSQL URL names no database (postgres://host/<name>)")
    options: dict[str, Any] = dict(parse_qsl(parts.query))
    options.setdefault("connect_timeout", "10")
    # A thread that finds the pool empty waits this long for a connection before failing.
    options["pool"] = {"min_size": 1, "max_size": pool_size, "timeout": 30}
    return {
        "ENGINE": "django.db.backends.postgresql",
        "NAME": name,
        "USER": unquote(parts.username or ""),
        "PASSWORD": unquote(parts.password or ""),
        "HOST": unquote(parts.hostname or ""),
        "PORT": str(parts.port or ""),
        "OPTIONS": options,
    }


def database(url: str, sqlite_path: Path, pool_size: int) -> dict[str, Any]:
    return postgres_database(url, pool_size) if url else sqlite_database(sqlite_path)
