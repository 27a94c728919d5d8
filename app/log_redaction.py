"""Keeps secrets that travel in URLs out of the logs.

`/v1/ws?api_key=...`, signed output URLs (`signature=`), and the URLs of webhook receivers (which
may carry `token=` or `key=`) are printed whole by uvicorn's access and server logs and by the HTTP
client; the filter rewrites those query values, and a URL's `user:password@`, before any handler
formats the record. It is attached to each logger that prints URLs (a filter on a logger does not
apply to its children), by create_app, so it holds however the app is served (`comfy-gateway
serve`, `uvicorn app.main:app`, tests).
"""

from __future__ import annotations

import logging
import re

REDACTED = "[redacted]"
#: Query parameters whose value is a secret.
SECRET_PARAMS = ("api_key", "signature", "token", "key", "access_token")

_QUERY_SECRET = re.compile(r"([?&](?:%s)=)[^&#\s\"']*" % "|".join(SECRET_PARAMS), re.IGNORECASE)
_USERINFO = re.compile(r"(\b[a-z][a-z0-9+.-]*://[^/\s:@]*:)[^/\s@]*@", re.IGNORECASE)
#: Loggers that print URLs besides the app's own (`app` and every `app.*` logger).
_OTHER_LOGGERS = ("uvicorn.access", "uvicorn.error", "httpx")


def redact(text: str) -> str:
    return _USERINFO.sub(r"\1" + REDACTED + "@", _QUERY_SECRET.sub(r"\1" + REDACTED, text))


class RedactSecrets(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.msg, str):
            record.msg = redact(record.msg)
        # Arguments are redacted one by one, not merged into the message: uvicorn's access
        # formatter unpacks them (client, method, path, version, status).
        if isinstance(record.args, tuple):
            record.args = tuple(redact(a) if isinstance(a, str) else a for a in record.args)
        elif isinstance(record.args, dict):
            record.args = {k: redact(v) if isinstance(v, str) else v for k, v in record.args.items()}
        return True


_FILTER = RedactSecrets()


def install() -> None:
    """Idempotent. Covers the app's loggers that exist now: they are made at import time."""
    names = [n for n in list(logging.root.manager.loggerDict) if n == "app" or n.startswith("app.")]
    for name in ["app", *names, *_OTHER_LOGGERS]:
        logger = logging.getLogger(name)
        if _FILTER not in logger.filters:
            logger.addFilter(_FILTER)
