"""One signed POST of a message to a destination: Standard Webhooks headers (signed by the
maintained `standardwebhooks` library, one signature per live secret), a timeout, no
redirects, no retries here (the delivery row's schedule is the retry), and — for a
destination anyone may set — a connection only to the public address it was checked at."""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import datetime

import urllib3
from standardwebhooks.webhooks import Webhook

from workers.outbound.address import Refused, check_url, public_address

USER_AGENT = "stripe-mismatch-outbound/1"
READ_LIMIT = 4096  # of a receiver's answer: enough for an error line, never a flood


@dataclass(frozen=True)
class Answer:
    """What one attempt got: the HTTP status, or why there was none."""

    status: int | None
    latency_ms: int
    error: str | None = None

    @property
    def delivered(self) -> bool:
        return self.status is not None and 200 <= self.status < 300


def signature(secrets: list[str], message_id: str, at: datetime, body: bytes) -> str:
    """The `webhook-signature` header: every secret's `v1,<base64>`, space-separated."""
    return " ".join(Webhook(secret).sign(message_id, at, body) for secret in secrets)


def headers(secrets: list[str], message_id: str, at: datetime, body: bytes
            ) -> dict[str, str]:
    return {"content-type": "application/json", "user-agent": USER_AGENT,
            "webhook-id": message_id, "webhook-timestamp": str(int(at.timestamp())),
            "webhook-signature": signature(secrets, message_id, at, body)}


class Sender:
    """Keeps one connection pool per address, so a destination's deliveries reuse their
    connection. `checked`: the destination is anyone's (API-made, and private addresses
    are not allowed): resolve, refuse a non-public address, connect to the address checked."""

    def __init__(self, timeout: float) -> None:
        self.timeout = urllib3.Timeout(connect=min(timeout, 5.0), read=timeout)
        self.pools = urllib3.PoolManager(num_pools=64, maxsize=1, retries=False,
                                         timeout=self.timeout)
        self.pinned: dict[tuple[str, str, int], urllib3.HTTPSConnectionPool] = {}

    def post(self, url: str, body: bytes, sent_headers: dict[str, str], *, checked: bool
             ) -> Answer:
        started = time.monotonic()
        try:
            if checked:
                response = self._post_checked(url, body, sent_headers)
            else:
                response = self.pools.request("POST", url, body=body, headers=sent_headers,
                                              redirect=False, preload_content=False)
            try:
                response.read(READ_LIMIT)
            finally:
                response.release_conn()
            return Answer(response.status, _ms(started))
        except Refused as exc:
            return Answer(None, _ms(started), f"refused: {exc}")
        except urllib3.exceptions.HTTPError as exc:
            return Answer(None, _ms(started), _failure(exc))

    def _post_checked(self, url: str, body: bytes, sent_headers: dict[str, str]
                      ) -> urllib3.BaseHTTPResponse:
        _scheme, host, port = check_url(url, allow_private=False)
        address = public_address(host, port)
        pool = self.pinned.get((host, address, port))
        if pool is None:
            pool = self.pinned[(host, address, port)] = urllib3.HTTPSConnectionPool(
                address, port, server_hostname=host, assert_hostname=host, maxsize=1,
                retries=False, timeout=self.timeout)
        parts = urllib3.util.parse_url(url)
        path = parts.request_uri
        host_header = host if port == 443 else f"{host}:{port}"
        return pool.urlopen("POST", path, body=body,
                            headers={**sent_headers, "host": host_header}, redirect=False,
                            preload_content=False, assert_same_host=False)

    def close(self) -> None:
        self.pools.clear()
        for pool in self.pinned.values():
            pool.close()
        self.pinned.clear()


def _ms(started: float) -> int:
    return int((time.monotonic() - started) * 1000)


def _failure(exc: Exception) -> str:
    """The error's kind in a few words (a timeout, a refused connection, TLS), no payload."""
    reason = getattr(exc, "reason", None)
    if isinstance(exc, urllib3.exceptions.TimeoutError) or \
            isinstance(reason, urllib3.exceptions.TimeoutError):
        return "timed out"
    if isinstance(exc, urllib3.exceptions.SSLError) or \
            isinstance(reason, urllib3.exceptions.SSLError):
        return "TLS failed (certificate or handshake)"
    if isinstance(reason, urllib3.exceptions.NewConnectionError) or \
            isinstance(exc, urllib3.exceptions.NewConnectionError):
        return "could not connect"
    return type(reason or exc).__name__
