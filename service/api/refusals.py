"""The status code of each refusal core raises (service/core/errors.py), for the API and the dashboard alike."""

from __future__ import annotations

from service.core.errors import Conflict, Invalid, Limited, NotFound, ServiceError, TooLarge, Unavailable

# How core's refusals are answered; any other ServiceError is a 400.
STATUS_OF: dict[type[ServiceError], int] = {
    NotFound: 404,
    Conflict: 409,
    TooLarge: 413,
    Invalid: 422,
    Limited: 429,
    Unavailable: 503,
}


def status_of(exc: ServiceError) -> int:
    return next((code for kind, code in STATUS_OF.items() if isinstance(exc, kind)), 400)
