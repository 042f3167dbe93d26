"""Who may see which support-console page, and CSRF protection for its forms.

Two kinds of visitor:
- support staff, signed in with a name and password from SUPPORT_USERS (hashed); they see
  every venue;
- venue admins, who have no account: the signed link in a notice email (notifications.links)
  is exchanged for a *grant* in their session that opens that one mismatch, for that one
  Stripe account, until the link itself would expire. Nothing else is reachable with it.

Every POST carries a token bound to the session (`csrf_token` form field: Flask-WTF's
CSRFProtect), so another site cannot make a signed-in browser resolve a mismatch or replay
events.
"""

from __future__ import annotations

import hmac
import secrets
import time
from dataclasses import dataclass
from datetime import timedelta
from functools import cache
from urllib.parse import urlsplit

from flask import Flask, Request, g, session
from flask.sessions import SecureCookieSession, SecureCookieSessionInterface
from flask_wtf.csrf import CSRFError, CSRFProtect, generate_csrf
from sqlalchemy import delete
from werkzeug.security import check_password_hash, generate_password_hash

from config import Config
from db import Database, EndedSession, Mismatch, utcnow
from listener.sign_in_pool import hash_pool


class PageSessions(SecureCookieSessionInterface):
    """Flask's signed-cookie sessions, for the pages people use only. Stripe's deliveries
    never carry one, and opening it (a signing serializer built per request) cost the webhook
    path as much as its log line (benchmarks/intake.py)."""

    def open_session(self, app: Flask, request: Request) -> SecureCookieSession | None:
        if request.path.startswith("/webhooks/"):
            return self.make_null_session(app)
        return super().open_session(app, request)


# A staff sign-in lasts a working day; then the password is asked again.
STAFF_SESSION_SECONDS = 12 * 3600
# Grants kept per browser session (the newest win); each is one mismatch.
MAX_GRANTS = 20
CSRF_FIELD = "csrf_token"


@dataclass(frozen=True)
class Viewer:
    """The person behind a request: a support user, or a venue admin holding a grant."""

    staff: str | None = None

    @property
    def is_staff(self) -> bool:
        return self.staff is not None

    def actor(self) -> str:
        """How a manual action is attributed in the mismatch's resolution note."""
        return f"{self.staff} (support)" if self.staff else "venue admin (email link)"


# --- CSRF ------------------------------------------------------------------------------------

csrf = CSRFProtect()


def init_csrf(app: Flask) -> None:
    """Flask-WTF's tokens for the console's forms only: the webhooks are signed by Stripe and
    the API takes a bearer token, so nothing is checked by default and the console asks
    (`csrf_ok`). A token lasts as long as the session; no Referer check over HTTPS, since the
    pages send none (Referrer-Policy: no-referrer)."""
    app.config.setdefault("WTF_CSRF_CHECK_DEFAULT", False)
    app.config.setdefault("WTF_CSRF_TIME_LIMIT", None)
    app.config.setdefault("WTF_CSRF_SSL_STRICT", False)
    app.config.setdefault("WTF_CSRF_FIELD_NAME", CSRF_FIELD)
    csrf.init_app(app)


def csrf_token() -> str:
    """The session's form token, created on first use."""
    return generate_csrf()


def csrf_ok() -> bool:
    """True when this POST carries the session's token."""
    try:
        csrf.protect()
    except CSRFError:
        return False
    return True


# --- staff -----------------------------------------------------------------------------------

@cache
def _dummy_hash() -> str:
    # Checked for unknown names too, so a wrong name costs as long as a wrong password.
    return generate_password_hash(secrets.token_urlsafe(16))


def check_staff_password(config: Config, name: str, password: str) -> bool:
    """True when `name` is in SUPPORT_USERS and `password` matches its hash. The hash runs on
    listener.sign_in_pool's threads, never on the loop that answers Stripe."""
    hashed = config.support_users.get(name)
    pool = hash_pool()
    ok = pool.run(check_password_hash, hashed or pool.run(_dummy_hash), password)
    return ok and hashed is not None


def _hash_key(config: Config, name: str) -> str | None:
    """Which password hash a sign-in was made with, as a keyed digest (the cookie is readable):
    a session made with an old hash stops working when the user's hash changes."""
    hashed = config.support_users.get(name)
    if hashed is None:
        return None
    return hmac.new(config.secret_key.encode(), hashed.encode(), "sha256").hexdigest()[:32]


def sign_in(config: Config, name: str) -> None:
    """Start a fresh session (no fixation: nothing from before sign-in survives)."""
    session.clear()
    session["staff"] = name
    session["staff_at"] = int(time.time())
    session["staff_key"] = _hash_key(config, name)
    session["sid"] = secrets.token_urlsafe(24)
    g.pop("staff_user", None)


def sign_out(db: Database) -> None:
    """End this session for good: its cookie, replayed, no longer signs anyone in."""
    sid = session.get("sid")
    session.clear()
    g.pop("staff_user", None)
    if not isinstance(sid, str) or not sid:
        return
    cutoff = utcnow() - timedelta(seconds=STAFF_SESSION_SECONDS)
    with db.session() as s:
        s.execute(delete(EndedSession).where(EndedSession.ended_at < cutoff))
        if s.get(EndedSession, sid[:64]) is None:
            s.add(EndedSession(session_id=sid[:64]))


def staff_user(config: Config, db: Database) -> str | None:
    """The signed-in support user: a recent sign-in, not signed out, by a user who still
    exists with the password hash the sign-in was made with. Answered once per request
    (flask.g): pages ask again while rendering, inside their own database session."""
    if "staff_user" not in g:
        g.staff_user = _staff_user(config, db)
    return g.staff_user


def _staff_user(config: Config, db: Database) -> str | None:
    name = session.get("staff")
    started = session.get("staff_at", 0)
    sid = session.get("sid")
    if not isinstance(name, str) or name not in config.support_users:
        return None
    if not isinstance(started, int) or time.time() - started > STAFF_SESSION_SECONDS:
        return None
    key = session.get("staff_key")
    if not isinstance(key, str) or not hmac.compare_digest(key, _hash_key(config, name) or ""):
        return None
    if not isinstance(sid, str) or not sid:
        return None
    with db.session() as s:
        if s.get(EndedSession, sid[:64]) is not None:
            return None
    return name


# --- venue-admin grants ----------------------------------------------------------------------

def add_grant(mismatch_id: int, account_id: str, expires_at: int) -> None:
    """Remember in the session that this browser opened a valid link to this mismatch."""
    grants = dict(session.get("grants") or {})
    grants[str(mismatch_id)] = [account_id, int(expires_at)]
    if len(grants) > MAX_GRANTS:
        newest = sorted(grants.items(), key=lambda kv: kv[1][1])[-MAX_GRANTS:]
        grants = dict(newest)
    session["grants"] = grants


def has_grant(mismatch: Mismatch) -> bool:
    """True when the session holds an unexpired grant for exactly this mismatch and account."""
    grant = (session.get("grants") or {}).get(str(mismatch.id))
    if not isinstance(grant, list) or len(grant) != 2:
        return False
    account_id, expires_at = grant
    return (isinstance(expires_at, int) and expires_at > time.time()
            and hmac.compare_digest(str(account_id).encode(), mismatch.account_id.encode()))


def viewer_for(config: Config, db: Database, mismatch: Mismatch | None) -> Viewer | None:
    """Who may see `mismatch` (None for staff-only pages); None means nobody here may."""
    name = staff_user(config, db)
    if name:
        return Viewer(staff=name)
    if mismatch is not None and has_grant(mismatch):
        return Viewer()
    return None


def safe_next(target: str | None) -> str | None:
    """A path on this site to return to after sign-in, or None (no open redirects): no
    control characters or spaces (browsers drop a tab, so `/\t/evil.test` is `//evil.test`),
    no backslash, no scheme or host, not `//`."""
    if not target or not target.startswith("/") or target.startswith("//"):
        return None
    if "\\" in target or any(ord(c) <= 0x20 or ord(c) == 0x7F for c in target):
        return None
    parts = urlsplit(target)
    if parts.scheme or parts.netloc or not parts.path.startswith("/"):
        return None
    return target
