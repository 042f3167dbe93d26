"""Every setting the service reads from the environment, parsed and checked in one place.

A malformed value fails at start-up with a message naming the variable, instead of
surfacing later as a confusing error inside a webhook request or a worker job.
"""

from __future__ import annotations

import base64
import binascii
import os
import re
import secrets
import string
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar
from urllib.parse import parse_qs, unquote, urlsplit

STRIPE_API_BASE_DEFAULT = "https://api.stripe.com"
# Stripe's largest events are a few hundred KiB; 4 MiB leaves wide room and still stops abuse.
MAX_WEBHOOK_BYTES_DEFAULT = 4 * 1024 * 1024
# A notice's link to its mismatch page stays valid this long (the admin may act days later).
MISMATCH_LINK_MAX_AGE_DEFAULT = 14 * 24 * 3600
# The webhook routes, by endpoint, and the variable holding each one's signing secrets: the
# web tier serves them, `mismatch stripe setup` and `stripe check` point Stripe at them.
PLATFORM, CONNECT, THIN = "platform", "connect", "thin"
WEBHOOK_PATHS = {PLATFORM: "/webhooks/stripe", CONNECT: "/webhooks/stripe/connect",
                 THIN: "/webhooks/stripe/thin"}
SECRET_VARS = {PLATFORM: "STRIPE_WEBHOOK_SECRETS", CONNECT: "STRIPE_CONNECT_WEBHOOK_SECRETS",
               THIN: "STRIPE_THIN_WEBHOOK_SECRETS"}
# werkzeug.security.generate_password_hash output: "method$salt$hash".
_PASSWORD_HASH = re.compile(r"^(scrypt|pbkdf2):[A-Za-z0-9:]+\$[^$\s]+\$[0-9a-f]+$")
_SUPPORT_USER = re.compile(r"^[A-Za-z0-9._@-]{1,64}$")


class ConfigError(ValueError):
    """A setting in the environment is missing or malformed."""


# Standard Webhooks' schedule after the first attempt: 5 s, 5 min, 30 min, 2 h, 5 h, 10 h, 10 h.
OUTBOUND_RETRY_DEFAULT = (5, 300, 1800, 7200, 18000, 36000, 36000)


@dataclass(frozen=True)
class SmtpSettings:
    host: str
    port: int
    username: str | None
    password: str | None
    starttls: bool
    ssl: bool


@dataclass(frozen=True)
class Config:
    instance_path: Path
    database_url: str
    redis_url: str | None  # None: the embedded Redis under instance/
    stripe_secret_key: str | None
    stripe_platform_account: str | None
    stripe_api_base: str
    webhook_secrets: tuple[str, ...]
    connect_webhook_secrets: tuple[str, ...]
    thin_webhook_secrets: tuple[str, ...]  # an Event Destination's (thin events)
    webhook_tolerance: int
    max_webhook_bytes: int
    smtp: SmtpSettings | None
    mail_from: str
    public_base_url: str
    # The booking product's pages, for buttons in notices and pages (values URL-encoded):
    # INVITE_URL_TEMPLATE with {account_id}, {email}; MEMBER_URL_TEMPLATE with {account_id},
    # {member_ref}. Unset: the steps say it in words.
    invite_url_template: str | None
    member_url_template: str | None
    secret_key: str
    secret_key_generated: bool
    production: bool  # MISMATCH_ENV or FLASK_ENV is "production"
    api_token: str | None
    metrics_token: str | None  # when set, GET /metrics needs it as a bearer token
    # Proxies in front of the web tier that set X-Forwarded-For (a load balancer: 1): the
    # client address the sign-in and rejection limits count by. 0 trusts no such header.
    proxy_hops: int
    rejections_recorded_per_minute: int  # rejected-delivery rows per remote address
    support_email: str | None
    # Payloads of finished events older than this are emptied by `mismatch prune` (the rows
    # stay: dedup, timelines, tallies); well past Stripe's 30-day Events API window.
    payload_retention_days: int
    job_retry_intervals: tuple[int, ...]
    sweep_after_seconds: int
    # Requests per second for all processes together (Stripe: 25 test, 100 live); None: by
    # the key's mode.
    stripe_rate_limit: int | None
    stripe_max_retries: int  # stripe-python's own retries (connection errors, 409, 5xx, …)
    stripe_timeout: float  # seconds per HTTP request to Stripe
    queue_name: str
    events_per_batch: int  # inbox events one worker transaction handles at most
    # Support-console sign-in: user name -> werkzeug password hash (never a plain password).
    support_users: Mapping[str, str] = field(default_factory=dict)
    mismatch_link_max_age: int = MISMATCH_LINK_MAX_AGE_DEFAULT
    # The booking product's webhook (workers/outbound): the operator's, trusted as given;
    # every listed secret signs (rotation).
    booking_webhook_url: str | None = None
    booking_webhook_secrets: tuple[str, ...] = ()
    outbound_retry_seconds: tuple[int, ...] = OUTBOUND_RETRY_DEFAULT
    outbound_timeout: float = 10.0  # seconds per delivery attempt
    # Development only: API-made destinations may be http:// and reach private addresses.
    allow_private_destinations: bool = False


def _booking_webhook(env: Mapping[str, str]) -> tuple[str | None, tuple[str, ...]]:
    url = env.get("BOOKING_WEBHOOK_URL", "").strip() or None
    given = tuple(s.strip() for s in env.get("BOOKING_WEBHOOK_SECRET", "").split(",")
                  if s.strip())
    if url is None:
        return None, given
    if not url.startswith(("http://", "https://")):
        raise ConfigError("BOOKING_WEBHOOK_URL: expected an http:// or https:// URL")
    if not given:
        raise ConfigError("BOOKING_WEBHOOK_SECRET: required with BOOKING_WEBHOOK_URL (whsec_ "
                          "and base64, e.g. mismatch outbound new-secret)")
    for secret in given:
        if not is_signing_secret(secret):
            raise ConfigError("BOOKING_WEBHOOK_SECRET: every secret must be 'whsec_' and the "
                              "base64 of at least 24 bytes")
    return url, given


def is_signing_secret(value: str) -> bool:
    """A Standard Webhooks secret: whsec_ and the base64 of at least 24 bytes."""
    if not value.startswith("whsec_"):
        return False
    try:
        return len(base64.b64decode(value[len("whsec_"):], validate=True)) >= 24
    except (binascii.Error, ValueError):
        return False


def _seconds_list(env: Mapping[str, str], name: str, default: tuple[int, ...]
                  ) -> tuple[int, ...]:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        values = tuple(int(x) for x in raw.split(","))
    except ValueError:
        raise ConfigError(f"{name}: expected comma-separated whole seconds, got {raw!r}"
                          ) from None
    if any(v < 0 for v in values):
        raise ConfigError(f"{name}: seconds must not be negative")
    return values


def _secrets(env: Mapping[str, str], name: str) -> tuple[str, ...]:
    raw = env.get(name, "")
    values = tuple(s.strip() for s in raw.split(",") if s.strip())
    for value in values:
        if not value.startswith("whsec_"):
            raise ConfigError(
                f"{name}: every secret must start with 'whsec_' (Stripe's endpoint signing secret);"
                f" got one starting with {value[:6]!r}"
            )
    return values


N = TypeVar("N", int, float)


def _number(env: Mapping[str, str], name: str, parse: Callable[[str], N], expected: str
            ) -> N | None:
    """The variable parsed, None when unset or blank; a value `parse` refuses names it."""
    raw = env.get(name)
    if raw is None or raw.strip() == "":
        return None
    try:
        return parse(raw)
    except ValueError:
        raise ConfigError(f"{name}: expected {expected}, got {raw!r}") from None


def _int(env: Mapping[str, str], name: str, default: int, minimum: int = 0) -> int:
    value = _number(env, name, int, "a whole number")
    if value is None:
        return default
    if value < minimum:
        raise ConfigError(f"{name}: must be at least {minimum}, got {value}")
    return value


def _float(env: Mapping[str, str], name: str, default: float) -> float:
    value = _number(env, name, float, "a number of seconds")
    if value is None:
        return default
    if value < 0:
        raise ConfigError(f"{name}: must not be negative")
    return value


def parse_smtp_url(url: str) -> SmtpSettings:
    """`smtp://user:pass@host:port?starttls=1` (or `smtps://` for implicit TLS)."""
    parts = urlsplit(url)
    if parts.scheme not in ("smtp", "smtps") or not parts.hostname:
        raise ConfigError(
            f"SMTP_URL: expected smtp://user:pass@host:port[?starttls=1], got scheme "
            f"{parts.scheme or '(none)'!r}"
        )
    try:
        port = parts.port or (465 if parts.scheme == "smtps" else 25)
    except ValueError:
        raise ConfigError("SMTP_URL: the port is not a number") from None
    query = parse_qs(parts.query)
    starttls = query.get("starttls", ["0"])[0].lower() in ("1", "true", "yes")
    return SmtpSettings(
        host=parts.hostname,
        port=port,
        username=unquote(parts.username) if parts.username else None,
        password=unquote(parts.password) if parts.password else None,
        starttls=starttls,
        ssl=parts.scheme == "smtps",
    )


def _support_users(env: Mapping[str, str]) -> dict[str, str]:
    """`SUPPORT_USERS="alice:<hash>,bob:<hash>"`, hashes from werkzeug's
    generate_password_hash, so the environment never holds a usable password."""
    raw = env.get("SUPPORT_USERS", "").strip()
    users: dict[str, str] = {}
    for n, entry in enumerate((e.strip() for e in raw.split(",")), start=1):
        if not entry:
            continue
        name, sep, hashed = entry.partition(":")
        name, hashed = name.strip(), hashed.strip()
        if not sep or not _SUPPORT_USER.match(name):
            raise ConfigError(f"SUPPORT_USERS: entry {n} must be 'name:password-hash' with a "
                              f"name of letters, digits, '.', '_', '@' or '-'")
        if not _PASSWORD_HASH.match(hashed):
            raise ConfigError(
                f"SUPPORT_USERS: the password of {name!r} must be a werkzeug password hash "
                f"(python -c \"from werkzeug.security import generate_password_hash; "
                f"print(generate_password_hash('...'))\"), not a plain password")
        if name in users:
            raise ConfigError(f"SUPPORT_USERS: user {name!r} is listed twice")
        users[name] = hashed
    return users


def _database_url(env: Mapping[str, str], instance_path: Path) -> str:
    url = env.get("DATABASE_URL", "").strip()
    if not url:
        return f"sqlite:///{instance_path / 'mismatch.sqlite3'}"
    if url.startswith("postgres://"):  # Heroku-style URLs
        url = "postgresql://" + url[len("postgres://") :]
    if url.startswith("postgresql://"):
        url = "postgresql+psycopg://" + url[len("postgresql://") :]
    if not (url.startswith("sqlite") or url.startswith("postgresql")):
        raise ConfigError(f"DATABASE_URL: only sqlite:// and postgresql:// are supported, got "
                          f"{url.split(':', 1)[0]!r}")
    return url


def _dev_secret_key(instance_path: Path, *, create: bool = True) -> str:
    """One generated key per instance folder, so web and worker processes sign alike. With
    `create` false a missing folder is not made: the key is this process's only (the CLI,
    which must not leave an instance folder wherever it happens to be run)."""
    path = instance_path / "secret_key"
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        if not create:
            return secrets.token_hex(32)
        instance_path.mkdir(parents=True, exist_ok=True)
        key = secrets.token_hex(32)
        try:
            with open(path, "x") as fh:
                fh.write(key)
            return key
        except FileExistsError:  # another process won the race
            return path.read_text().strip()


def _url_template(env: Mapping[str, str], name: str, fields: set[str]) -> str | None:
    """An http(s) URL template using only `fields` as {placeholders}, or None when unset."""
    raw = env.get(name, "").strip()
    if not raw:
        return None
    if not raw.startswith(("https://", "http://")):
        raise ConfigError(f"{name}: expected an http(s):// URL")
    try:
        used = {f for _, f, _, _ in string.Formatter().parse(raw) if f is not None}
    except ValueError:
        raise ConfigError(f"{name}: unbalanced {{ }} in the template") from None
    if not used <= fields:
        raise ConfigError(f"{name}: unknown placeholder(s) {', '.join(sorted(used - fields))}; "
                          f"use {', '.join('{' + f + '}' for f in sorted(fields))}")
    return raw


# A signing key shorter than this is guessable offline from one signed link.
SECRET_KEY_MIN = 32


def is_production(env: Mapping[str, str]) -> bool:
    return "production" in (env.get("FLASK_ENV"), env.get("MISMATCH_ENV"))


def production_problems(env: Mapping[str, str]) -> list[tuple[str, str]]:
    """The laptop defaults a production environment still leans on, as (setting, why): each
    works on a laptop and quietly loses data or mail on a server."""
    if not is_production(env):
        return []
    problems = []
    if not env.get("DATABASE_URL", "").strip():
        problems.append(("DATABASE_URL", "required in production (unset, the data would live "
                                         "in an SQLite file under instance/ on this one host)"))
    if not env.get("REDIS_URL", "").strip():
        problems.append(("REDIS_URL", "required in production (unset, each host would start "
                                      "an embedded Redis of its own)"))
    if not env.get("SMTP_URL", "").strip():
        problems.append(("SMTP_URL", "required in production (unset, notices would go to the "
                                     "local outbox and never leave this host)"))
    key = env.get("SECRET_KEY", "").strip()
    if len(key) < SECRET_KEY_MIN:
        problems.append(("SECRET_KEY", f"required in production, at least {SECRET_KEY_MIN} "
                                       f"characters ({'unset' if not key else f'{len(key)} given'};"
                                       f" python -c 'import secrets; print(secrets.token_hex(32))')"
                         ))
    return problems


def load_config(env: Mapping[str, str] | None = None, *, create_instance: bool = True,
                allow_production_problems: bool = False) -> Config:
    """Read the environment once; raise ConfigError naming the variable on bad input, and in
    production on any laptop default (production_problems) — in one line naming each.
    `create_instance=False` writes nothing (no instance folder, no generated key file);
    `allow_production_problems` is for the doctor, which reports them instead."""
    env = os.environ if env is None else env
    problems = production_problems(env)
    if problems and not allow_production_problems:
        raise ConfigError("; ".join(f"{name}: {why}" for name, why in problems))
    instance_path = Path(env.get("INSTANCE_PATH") or Path.cwd() / "instance").resolve()

    redis_url = env.get("REDIS_URL", "").strip() or None
    if redis_url and not redis_url.startswith(("redis://", "rediss://", "unix://")):
        raise ConfigError("REDIS_URL: expected redis://, rediss:// or unix://")

    smtp_url = env.get("SMTP_URL", "").strip()
    smtp = parse_smtp_url(smtp_url) if smtp_url else None

    secret_key = env.get("SECRET_KEY", "").strip()
    generated = False
    production = is_production(env)
    if not secret_key:
        secret_key = _dev_secret_key(instance_path, create=create_instance)
        generated = True

    platform = env.get("STRIPE_PLATFORM_ACCOUNT", "").strip() or None
    if platform and not platform.startswith("acct_"):
        raise ConfigError("STRIPE_PLATFORM_ACCOUNT: expected an account id starting with 'acct_'")

    key = env.get("STRIPE_SECRET_KEY", "").strip() or None
    if key and not key.startswith(("sk_", "rk_")):
        raise ConfigError("STRIPE_SECRET_KEY: expected a key starting with 'sk_' or 'rk_'")

    intervals_raw = env.get("JOB_RETRY_INTERVALS", "5,15,60,300,900")
    try:
        intervals = tuple(int(x) for x in intervals_raw.split(",") if x.strip())
    except ValueError:
        raise ConfigError("JOB_RETRY_INTERVALS: expected comma-separated seconds") from None

    booking_url, booking_secrets = _booking_webhook(env)

    public = (env.get("PUBLIC_BASE_URL") or "http://localhost:5000").rstrip("/")
    if not public.startswith(("http://", "https://")):
        raise ConfigError("PUBLIC_BASE_URL: expected an http:// or https:// URL")

    return Config(
        instance_path=instance_path,
        database_url=_database_url(env, instance_path),
        redis_url=redis_url,
        stripe_secret_key=key,
        stripe_platform_account=platform,
        stripe_api_base=(env.get("STRIPE_API_BASE") or STRIPE_API_BASE_DEFAULT).rstrip("/"),
        webhook_secrets=_secrets(env, "STRIPE_WEBHOOK_SECRETS"),
        connect_webhook_secrets=_secrets(env, "STRIPE_CONNECT_WEBHOOK_SECRETS"),
        thin_webhook_secrets=_secrets(env, "STRIPE_THIN_WEBHOOK_SECRETS"),
        webhook_tolerance=_int(env, "STRIPE_WEBHOOK_TOLERANCE", 300, minimum=1),
        max_webhook_bytes=_int(env, "MAX_WEBHOOK_BYTES", MAX_WEBHOOK_BYTES_DEFAULT, minimum=1024),
        smtp=smtp,
        mail_from=env.get("MAIL_FROM", "").strip() or "mismatch@localhost",
        public_base_url=public,
        invite_url_template=_url_template(env, "INVITE_URL_TEMPLATE", {"account_id", "email"}),
        member_url_template=_url_template(env, "MEMBER_URL_TEMPLATE",
                                          {"account_id", "member_ref"}),
        secret_key=secret_key,
        secret_key_generated=generated,
        production=production,
        api_token=env.get("API_TOKEN", "").strip() or None,
        metrics_token=env.get("METRICS_TOKEN", "").strip() or None,
        proxy_hops=_int(env, "PROXY_HOPS", 0),
        rejections_recorded_per_minute=_int(env, "REJECTIONS_RECORDED_PER_MINUTE", 60,
                                            minimum=1),
        support_email=env.get("SUPPORT_EMAIL", "").strip() or None,
        payload_retention_days=_int(env, "PAYLOAD_RETENTION_DAYS", 90, minimum=7),
        job_retry_intervals=intervals or (0,),
        sweep_after_seconds=_int(env, "SWEEP_AFTER_SECONDS", 60),
        stripe_rate_limit=_int(env, "STRIPE_RATE_LIMIT", 0, minimum=0) or None,
        stripe_max_retries=_int(env, "STRIPE_MAX_RETRIES", 2),
        stripe_timeout=_float(env, "STRIPE_TIMEOUT", 30.0) or 30.0,
        queue_name=env.get("RQ_QUEUE", "").strip() or "mismatch",
        events_per_batch=_int(env, "EVENTS_PER_BATCH", 100, minimum=1),
        support_users=_support_users(env),
        mismatch_link_max_age=_int(env, "MISMATCH_LINK_MAX_AGE", MISMATCH_LINK_MAX_AGE_DEFAULT,
                                   minimum=60),
        booking_webhook_url=booking_url,
        booking_webhook_secrets=booking_secrets,
        outbound_retry_seconds=_seconds_list(env, "OUTBOUND_RETRY_SECONDS",
                                             OUTBOUND_RETRY_DEFAULT),
        outbound_timeout=_float(env, "OUTBOUND_TIMEOUT", 10.0) or 10.0,
        allow_private_destinations=env.get("ALLOW_PRIVATE_DESTINATIONS", "").strip().lower()
        in ("1", "true", "yes"),
    )
