"""Request ids, the access and audit log lines, and the JSON log formatter.

The security middleware sets `request_id` for the duration of a request; `RequestIdFilter` copies
it onto every log record so lines logged anywhere while serving carry it. `JsonFormatter` writes
one JSON object per line (`CORRAL_LOG_FORMAT=json`); `configure_logging` in the serve verb picks
it. Audit lines go to the `corral.audit` logger, access lines to `corral.access`.
"""

from __future__ import annotations

import contextvars
import json
import logging
import re
import time
import uuid
from typing import Any

request_id: contextvars.ContextVar[str | None] = contextvars.ContextVar("corral_request_id", default=None)

access_log = logging.getLogger("corral.access")
audit_log = logging.getLogger("corral.audit")

_SAFE_ID = re.compile(r"^[A-Za-z0-9._:\-]{1,128}$")
_RESERVED = set(vars(logging.makeLogRecord({}))) | {"message", "asctime"}


def new_request_id(presented: str | None) -> str:
    """Echo a client's X-Request-Id when it is short and safe to log, else make one."""
    if presented and _SAFE_ID.match(presented):
        return presented
    return uuid.uuid4().hex


class RequestIdFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "request_id"):
            record.request_id = request_id.get()
        return True


class JsonFormatter(logging.Formatter):
    """`{"time", "level", "logger", "msg", "request_id", ...extra fields}` on one line."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _RESERVED and value is not None:
                out[key] = value
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


def log_access(fields: dict[str, Any]) -> None:
    access_log.info("%s %s %s %.1fms", fields["method"], fields["path"], fields["status"],
                    fields["duration_ms"], extra=fields)


def log_audit(fields: dict[str, Any]) -> None:
    audit_log.info("audit key=%s %s %s -> %s", fields.get("key_id") or "-", fields["method"], fields["path"],
                   fields["status"], extra={**fields, "audit": True})
