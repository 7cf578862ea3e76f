"""Log records an operator can follow a request through: every tier names the request id (the
history row's key, the Celery task id, the X-Request-Id reply header), and with
``FACESITE_LOG_FORMAT=json`` each line is one JSON object a log shipper can index."""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime

# The record attribute that carries the request id (pass it as extra={"request_id": ...}).
REQUEST_ID = "request_id"


class RequestIdFilter(logging.Filter):
    """Sets `request_id` on every record: the one the caller gave, else, in a worker, the id of
    the task being run (the task id is the request id), else ""."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not getattr(record, REQUEST_ID, ""):
            setattr(record, REQUEST_ID, _current_task_id())
        return True


def _current_task_id() -> str:
    from celery import current_task

    request = getattr(current_task, "request", None) if current_task else None
    return str(getattr(request, "id", "") or "")


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time (UTC, ISO 8601), level, logger, process, message,
    request_id, and the traceback when there is one."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": datetime.fromtimestamp(record.created, tz=UTC).isoformat(
                timespec="milliseconds"
            ),
            "level": record.levelname,
            "logger": record.name,
            "process": record.process,
            "message": record.getMessage(),
            REQUEST_ID: getattr(record, REQUEST_ID, ""),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)
