"""Limits on what anyone on the internet can make the web tier do, counted in the service's
Redis with `limits` (so every web process shares the count): sign-in attempts per client and
per user name (each costs a full password hash), and rejected deliveries recorded per address
(so junk traffic cannot grow `rejected_deliveries` without bound).

A sign-in is counted before its password is checked, in one atomic increment per limit:
counted after, concurrent attempts all passed a test made before any was counted (40 at once
for one user got 17 checks against a limit of 5).

When Redis cannot answer, the limits let requests through (logged): the console and intake
keep working, and the password hash itself still has its cost and its queue bound."""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass

from limits import RateLimitItem, parse
from limits.strategies import FixedWindowRateLimiter
from redis.exceptions import RedisError

from config import Config
from workers import get_redis, limits_storage

log = logging.getLogger(__name__)

SIGN_IN_PER_NAME = parse("5/5 minutes")  # sign-in attempts for one user name
SIGN_IN_PER_CLIENT = parse("20/10 minutes")  # sign-in attempts from one address


@dataclass(frozen=True)
class Over:
    """A limit reached: try again after `retry_after` seconds."""

    retry_after: int

    @property
    def message(self) -> str:
        minutes = math.ceil(self.retry_after / 60)
        wait = f"{self.retry_after} s" if self.retry_after < 60 else f"{minutes} min"
        return f"Too many sign-in attempts. Try again in {wait}."


class Throttle:
    def __init__(self, config: Config) -> None:
        self.config = config
        self._limiter: FixedWindowRateLimiter | None = None
        # Rejected-delivery rows per address (REJECTIONS_RECORDED_PER_MINUTE).
        self.rejections_recorded = parse(f"{config.rejections_recorded_per_minute}/minute")

    def _strategy(self) -> FixedWindowRateLimiter:
        if self._limiter is None:  # connects on first use: most app instances never need it
            self._limiter = FixedWindowRateLimiter(
                limits_storage(get_redis(self.config), "throttle"))
        return self._limiter

    def sign_in_attempt(self, client: str, name: str) -> Over | None:
        """Count this attempt against both limits, then say whether it may be checked; a
        refused one never reaches the password hash. Every attempt counts, a successful one
        too (it clears only its user name's count: sign_in_succeeded)."""
        checks = ((SIGN_IN_PER_NAME, "sign-in-name", name.lower()),
                  (SIGN_IN_PER_CLIENT, "sign-in-client", client))
        try:
            limiter = self._strategy()
            allowed = [limiter.hit(item, *keys) for item, *keys in checks]
            for ok, (item, *keys) in zip(allowed, checks, strict=True):
                if not ok:
                    return Over(_retry_after(limiter, item, keys))
        except RedisError as exc:
            log.warning("sign-in limits unavailable (%s): not applied", type(exc).__name__)
        return None

    def sign_in_succeeded(self, name: str) -> None:
        """The right password: that name's earlier attempts no longer count against it (the
        address's still do, so one known password cannot reset an address's count)."""
        try:
            self._strategy().clear(SIGN_IN_PER_NAME, "sign-in-name", name.lower())
        except RedisError as exc:
            log.warning("sign-in limits unavailable (%s): not cleared", type(exc).__name__)

    def record_rejection(self, client: str) -> bool:
        """True while this address's rejected deliveries may still be stored."""
        return self._hit((self.rejections_recorded, "rejected", client))

    def _hit(self, *checks: tuple) -> bool:
        try:
            limiter = self._strategy()
            return all([limiter.hit(item, *keys) for item, *keys in checks])
        except RedisError as exc:
            log.warning("limits unavailable (%s): not counted", type(exc).__name__)
            return True


def _retry_after(limiter: FixedWindowRateLimiter, item: RateLimitItem, keys: list[str]) -> int:
    reset = limiter.get_window_stats(item, *keys).reset_time
    return max(1, math.ceil(reset - time.time()))
