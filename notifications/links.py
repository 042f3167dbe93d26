"""Signed, expiring links from a notice email to its mismatch page.

A venue admin has no account with us: the link itself is the permission. The token names the
mismatch AND its Stripe account, so a link can never open another venue's mismatch (even if a
mismatch id were reused), and it expires (MISMATCH_LINK_MAX_AGE, 14 days by default) so an
old forwarded email stops working. Signed with SECRET_KEY: rotating the key revokes them all.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from itsdangerous import BadSignature, SignatureExpired, TimestampSigner, URLSafeTimedSerializer

from config import Config

SALT = "mismatch-link/v1"
MAX_CLOCK_SKEW = 60  # seconds a token may be dated ahead of this server's clock


class LinkError(Exception):
    """The link cannot be used; the message is safe to show the person who clicked it."""


class LinkExpired(LinkError):
    """The link was genuine but is older than the allowed age."""

    def __init__(self, max_age: int) -> None:
        super().__init__(f"This link has expired: links in notice emails work for "
                         f"{describe_age(max_age)}.")
        self.max_age = max_age


class LinkInvalid(LinkError):
    """The link was not made by us (tampered, truncated, or signed with another key)."""


@dataclass(frozen=True)
class LinkGrant:
    mismatch_id: int
    account_id: str
    issued_at: int  # unix seconds

    def expires_at(self, max_age: int) -> int:
        return self.issued_at + max_age


def _serializer(config: Config, issued_at: float | None = None) -> URLSafeTimedSerializer:
    if issued_at is None:
        return URLSafeTimedSerializer(config.secret_key, salt=SALT)
    stamp = int(issued_at)

    class _IssuedAt(TimestampSigner):
        def get_timestamp(self) -> int:
            return stamp

    return URLSafeTimedSerializer(config.secret_key, salt=SALT, signer=_IssuedAt)


def link_token(config: Config, mismatch_id: int, account_id: str, *,
               issued_at: float | None = None) -> str:
    """The `t=` token alone; `issued_at` (unix seconds) only for tests of expiry."""
    return _serializer(config, issued_at).dumps({"m": int(mismatch_id), "a": account_id})


def mismatch_link(config: Config, mismatch_id: int, account_id: str, *,
                  issued_at: float | None = None) -> str:
    """The full URL a notice email carries: PUBLIC_BASE_URL/mismatches/<id>?t=<token>."""
    token = link_token(config, mismatch_id, account_id, issued_at=issued_at)
    return f"{config.public_base_url}/mismatches/{int(mismatch_id)}?t={token}"


def read_link(config: Config, token: str, max_age: int | None = None) -> LinkGrant:
    """Check a token and say what it grants; raises LinkExpired or LinkInvalid."""
    max_age = config.mismatch_link_max_age if max_age is None else max_age
    serializer = _serializer(config)
    try:
        data, issued = serializer.loads(token, max_age=max_age, return_timestamp=True)
    except SignatureExpired as exc:
        # itsdangerous also calls a token from the future "expired". A few seconds ahead is
        # clock skew between the worker that wrote the email and this server: accept it.
        ahead = exc.date_signed.timestamp() - time.time() if exc.date_signed else -1.0
        if ahead > MAX_CLOCK_SKEW:
            raise LinkInvalid("This link is not valid (it is dated in the future).") from None
        if ahead <= 0:
            raise LinkExpired(max_age) from None
        data, issued = serializer.loads(token, return_timestamp=True)
    except BadSignature:
        raise LinkInvalid("This link is not valid: it may have been cut short or changed."
                          ) from None
    if (not isinstance(data, dict) or not isinstance(data.get("m"), int)
            or not isinstance(data.get("a"), str)):
        raise LinkInvalid("This link is not valid.")
    return LinkGrant(mismatch_id=data["m"], account_id=data["a"],
                     issued_at=int(issued.timestamp()))


def describe_age(seconds: int) -> str:
    """`14 days`, `1 hour`: how long a link lives, in the words shown to its reader."""
    if seconds % 86400 == 0:
        days = seconds // 86400
        return f"{days} day{'s' if days != 1 else ''}"
    if seconds % 3600 == 0:
        hours = seconds // 3600
        return f"{hours} hour{'s' if hours != 1 else ''}"
    minutes = max(1, seconds // 60)
    return f"{minutes} minute{'s' if minutes != 1 else ''}"
