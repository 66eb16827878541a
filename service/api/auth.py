"""API keys: random bearer tokens, stored only as their sha256, each bound to an owner.

Every route that reaches user data depends on `current_owner`; the owner it returns is then part of every
query, which is what makes another owner's id indistinguishable from a missing one (404).

A key's owner is remembered for a few seconds per process, so a burst of polling requests does not cost a
database round trip each; a revoked key stops working within that time.

The key is checked from the request's headers alone, before any byte of its body is read
(service/api/authgate.py runs `authenticate` for every ``/v1`` request and hands the owner on), so a request
without a valid key costs the headers and nothing more, however large the body it announces.

Guessing is rate limited (service/api/ratelimit.py), in buckets kept apart so that one kind of failure
cannot lock out another kind of request:

- ``anon:<address>``: requests with no key at all. They answer 401 until the address spent its own
  budget, then 429; a flood of them never touches a key's budget, so a valid key from the same address
  (a shared NAT, a misconfigured script beside a good one) keeps working.
- ``addr:<address>`` and ``key:<digest>``: requests presenting a key that is not valid. Past the limit,
  any key from that address (or that key from anywhere) answers 429 before any lookup: guessing is the
  abuse the limit exists for, and a lookup would answer the guess.

A key seen valid in the last seconds (the key cache) is never held back. The client address is the TCP
peer, or the ``X-Forwarded-For`` client where the peer is one of ``BNRANK_TRUSTED_PROXIES`` (service/api/
app.py). Job submissions are limited per owner (`submitting_owner`).
"""

from __future__ import annotations

import hashlib
import secrets
import threading
import time
from typing import Annotated, Any

from fastapi import Depends, HTTPException, Request, status
from sqlalchemy import select
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from service.api.ratelimit import Limiter, retry_header
from service.api.singleflight import single_flight
from service.core.errors import Limited
from service.core.models import ApiKey, utcnow

KEY_PREFIX = "bnr_"
CACHE_SECONDS = 5.0


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def create_key(session: Session, owner: str) -> tuple[ApiKey, str]:
    """A new key for ``owner``; the plain key is returned once and never stored."""
    owner = owner.strip()
    if not owner or len(owner) > 200:
        raise ValueError("owner must be 1 to 200 characters")
    plain = KEY_PREFIX + secrets.token_urlsafe(32)
    row = ApiKey(owner=owner, key_hash=hash_key(plain), prefix=plain[:12])
    session.add(row)
    session.flush()
    return row, plain


def revoke_key(session: Session, key_id: str) -> bool:
    row = session.get(ApiKey, key_id)
    if row is None or row.revoked_at is not None:
        return False
    row.revoked_at = utcnow()
    return True


class KeyCache:
    """hash → (owner, expiry); thread-safe because sync routes run on a thread pool."""

    def __init__(self, ttl: float = CACHE_SECONDS) -> None:
        self.ttl = ttl
        self._items: dict[str, tuple[str, float]] = {}
        self._lock = threading.Lock()
        # Lookups in flight by key hash: when a busy key's entry expires, one request asks the database
        # and the others wait for it (service/api/singleflight.py) instead of all asking at once.
        self.loading: dict[str, Any] = {}

    def get(self, key_hash: str) -> str | None:
        with self._lock:
            item = self._items.get(key_hash)
        if item is None or item[1] < time.monotonic():
            return None
        return item[0]

    def forget(self, key_hash: str) -> None:
        with self._lock:
            self._items.pop(key_hash, None)

    def put(self, key_hash: str, owner: str) -> None:
        with self._lock:
            if len(self._items) > 10_000:
                self._items.clear()
            self._items[key_hash] = (owner, time.monotonic() + self.ttl)


def _unauthorized(detail: str) -> HTTPException:
    return HTTPException(status.HTTP_401_UNAUTHORIZED, detail=detail, headers={"WWW-Authenticate": "Bearer"})


def _owner_of(request: Request, digest: str) -> str | None:
    with request.app.state.db.sessions() as session:
        row = session.scalars(select(ApiKey).where(ApiKey.key_hash == digest)).first()
    return None if row is None or row.revoked_at is not None else row.owner


def _too_many(seconds: float) -> Limited:
    return Limited(f"too many failed authentications; try again in {retry_header(seconds)} s", seconds)


def _buckets(address: str, digest: str | None) -> list[str]:
    """The rate-limit buckets a failed authentication counts against (module docstring)."""
    return [f"addr:{address}", f"key:{digest}"] if digest is not None else [f"anon:{address}"]


def client_address(request: Request) -> str:
    """The address limits are counted against: the peer, or the client a trusted proxy forwarded."""
    return request.client.host if request.client else "unknown"


async def failed_authentication(
    limiter: Limiter, address: str, digest: str | None, detail: str
) -> HTTPException | Limited:
    """Count a failed authentication in its buckets (`_buckets`); the error to raise (401, or 429 past one)."""
    waits = [await limiter.take(bucket) for bucket in _buckets(address, digest)]
    late = [w for w in waits if w is not None]
    return _too_many(max(late)) if late else _unauthorized(detail)


async def held_back(limiter: Limiter, address: str, digest: str | None) -> float | None:
    """Seconds this request must still wait after too many failed authentications of its kind, or None."""
    waits = [await limiter.check(bucket) for bucket in _buckets(address, digest)]
    late = [w for w in waits if w is not None]
    return max(late) if late else None


async def lookup_owner(request: Request, digest: str) -> str | None:
    """The owner of a key digest from the database (one read per digest at a time), then kept in the key cache."""
    cache: KeyCache = request.app.state.key_cache
    owner = await single_flight(cache.loading, digest, lambda: run_in_threadpool(_owner_of, request, digest))
    if owner is not None:
        cache.put(digest, owner)
    return owner


async def owner_of_digest(request: Request, digest: str) -> str | None:
    """The owner of a key digest: the key cache, else :func:`lookup_owner`. The API's bearer keys and the
    dashboard's session cookies resolve owners through this one path."""
    owner = request.app.state.key_cache.get(digest)
    return owner if owner is not None else await lookup_owner(request, digest)


async def authenticate(request: Request) -> str:
    """The owner of the request's bearer key, or 401; 429 once this address or key failed too often.

    Reads the headers only (the gate calls it before the body is read). Async so that the common case (a
    key seen in the last seconds) costs no thread-pool round trip.
    """
    limiter: Limiter = request.app.state.auth_limiter
    address = client_address(request)
    header = request.headers.get("authorization", "")
    scheme, _, key = header.partition(" ")
    key = key.strip()
    digest = hash_key(key) if key and scheme.lower() == "bearer" else None
    cache: KeyCache = request.app.state.key_cache
    owner = cache.get(digest) if digest else None
    if owner is not None:
        return owner
    # Only a request that would need a lookup is held back: a valid, recently seen key keeps working.
    wait = await held_back(limiter, address, digest)
    if wait is not None:
        raise _too_many(wait)
    if digest is None:
        raise await failed_authentication(
            limiter,
            address,
            None,
            "missing API key: send 'Authorization: Bearer <key>' (create one with `bnrank keys create`)",
        )
    owner = await lookup_owner(request, digest)
    if owner is None:
        raise await failed_authentication(limiter, address, digest, "invalid or revoked API key")
    return owner


async def current_owner(request: Request) -> str:
    """The owner the gate authenticated for this request (service/api/authgate.py), else `authenticate`."""
    owner = getattr(request.state, "owner", None)
    return owner if isinstance(owner, str) else await authenticate(request)


Owner = Annotated[str, Depends(current_owner)]


async def submitting_owner(request: Request, owner: Owner) -> str:
    """The owner of a job-submitting request, or 429 past their submission rate (per owner)."""
    limiter: Limiter = request.app.state.submission_limiter
    wait = await limiter.take(owner)
    if wait is not None:
        raise Limited(f"too many jobs submitted; try again in {retry_header(wait)} s", wait)
    return owner


Submitter = Annotated[str, Depends(submitting_owner)]
