"""RFC 9457 problem documents: how every corral service says what is wrong with a request.

A problem names its kind (``type``: ``https://corral.dev/problems/<code>``, ``title``), the
HTTP ``status`` and a ``detail`` for a person. Validation problems name each bad field and
never repeat the value it held (it may be a secret or personal data).
"""

from __future__ import annotations

from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import ValidationError

PROBLEM = "application/problem+json"


def problem(status: int, code: str, detail: str) -> JSONResponse:
    body = {
        "type": f"https://corral.dev/problems/{code}",
        "title": code.replace("_", " "),
        "status": status,
        "detail": detail,
    }
    return JSONResponse(body, status_code=status, media_type=PROBLEM)


def validation_detail(exc: RequestValidationError | ValidationError) -> str:
    """``<field path>: <message>`` for each error, without the rejected values."""
    where = []
    for error in exc.errors():
        loc = ".".join(str(part) for part in error.get("loc", ()) if part != "body")
        where.append(f"{loc or '(body)'}: {error.get('msg', 'invalid')}")
    return "; ".join(where) or "malformed request"
