"""What a core use case can refuse, as exceptions without HTTP in them.

Core functions raise these; the API maps each class to its status code in one place (service/api/app.py),
so a route never builds an error answer itself and the worker or the CLI can call the same functions.
"""

from __future__ import annotations


class ServiceError(Exception):
    """A refusal whose message is meant for the caller: it says what is wrong and where."""

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


class NotFound(ServiceError):
    """Missing, or someone else's: existence is not disclosed across owners."""

    def __init__(self, what: str, ident: str) -> None:
        super().__init__(f"{what} {ident!r} not found")


class Conflict(ServiceError):
    """The request is valid but the resource's current state forbids it (a checkpoint in use, a job ended)."""


class Invalid(ServiceError):
    """The request cannot be run as asked (a bad budget, an unusable file or dataset)."""


class TooLarge(ServiceError):
    """The request (or what it unpacks to) is over a size limit."""


class Limited(ServiceError):
    """Too many requests of this kind from this caller lately; ``retry_after`` says when to try again."""

    def __init__(self, detail: str, retry_after: float) -> None:
        super().__init__(detail)
        self.retry_after = retry_after


class Unavailable(ServiceError):
    """A backing service (the task broker) cannot be reached right now."""
