"""Sign-ins against the web tier as the Procfile runs it (gevent workers): the limits hold
when the attempts come all at once, and a password hash being computed never holds up a
Stripe delivery on the same process."""

from __future__ import annotations

import re
import threading
import time
from collections import Counter

import pytest
import requests
from werkzeug.security import generate_password_hash

from tests.pages_support import SUPPORT_USERS
from tests.web_server import deliver, procfile_web

CSRF = re.compile(r'name="csrf_token" value="([^"]+)"')


def _ready_session(base: str) -> tuple[requests.Session, str]:
    """A browser session with the sign-in form's CSRF token, as a person would have it."""
    session = requests.Session()
    page = session.get(f"{base}/support/login", timeout=10)
    return session, CSRF.search(page.text).group(1)


def _at_once(base: str, logins: list[tuple[str, str]]) -> Counter:
    """Every (user, password) posted at the same moment, each from its own session; the
    statuses answered."""
    ready = [_ready_session(base) for _ in logins]
    barrier = threading.Barrier(len(logins))
    statuses: list[int] = []

    def attempt(n: int) -> None:
        session, token = ready[n]
        user, password = logins[n]
        barrier.wait()
        statuses.append(session.post(f"{base}/support/login", allow_redirects=False, timeout=60,
                                     data={"csrf_token": token, "username": user,
                                           "password": password}).status_code)

    threads = [threading.Thread(target=attempt, args=(n,)) for n in range(len(logins))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    return Counter(statuses)


@pytest.fixture
def web(env, db, redis):  # type: ignore[no-untyped-def]
    with procfile_web({**env, "SUPPORT_USERS": SUPPORT_USERS}) as port:
        yield f"http://127.0.0.1:{port}"


def test_concurrent_wrong_passwords_for_one_user_get_five_checks(web):
    statuses = _at_once(web, [("alice", f"guess {n}") for n in range(40)])
    assert statuses == {401: 5, 429: 35}  # 401: checked and wrong; 429: refused unchecked


def test_concurrent_sign_ins_from_one_address_get_twenty_checks(web):
    statuses = _at_once(web, [(f"user{n}", "guess") for n in range(60)])
    assert statuses == {401: 20, 429: 40}


def test_a_delivery_is_answered_while_a_password_hash_is_computed(env, db, redis):
    """One web process, so the delivery and the sign-in share its loop. The sign-in's hash
    is made slow on purpose (pbkdf2, 3M rounds: seconds); the delivery sent meanwhile is
    answered before the sign-in is."""
    slow = f"slow:{generate_password_hash('right', 'pbkdf2:sha256:3000000')}"
    with procfile_web(env, SUPPORT_USERS=slow, WEB_CONCURRENCY="1") as port:
        base = f"http://127.0.0.1:{port}"
        session, token = _ready_session(base)
        done: dict[str, float] = {}

        def sign_in() -> None:
            response = session.post(f"{base}/support/login", allow_redirects=False, timeout=60,
                                    data={"csrf_token": token, "username": "slow",
                                          "password": "wrong"})
            done["sign_in"] = time.monotonic()
            done["status"] = response.status_code

        started = time.monotonic()
        thread = threading.Thread(target=sign_in)
        thread.start()
        time.sleep(0.3)  # the sign-in has reached its hash by now
        status, seconds = deliver(port, 1)
        delivered = time.monotonic()
        thread.join(timeout=60)
    assert status == 200
    assert "sign_in" in done and done["status"] == 401
    assert delivered < done["sign_in"], (
        f"the delivery waited for the hash: answered {delivered - started:.2f}s after the "
        f"sign-in began, the sign-in at {done['sign_in'] - started:.2f}s")
    assert seconds < done["sign_in"] - started - 0.3


def test_the_gate_handles_a_few_sign_ins_at_once_and_turns_away_a_flood():
    """SignInGate: `running` at once, `waiting` parked behind them, the rest a 503 without
    reaching the app; anything but a sign-in passes straight through."""
    from werkzeug.test import Client
    from werkzeug.wrappers import Response

    from listener.sign_in_pool import SignInGate

    release, inside = threading.Event(), threading.Semaphore(0)
    seen: list[str] = []

    def app(environ, start_response):  # type: ignore[no-untyped-def]
        seen.append(environ["PATH_INFO"])
        if environ["REQUEST_METHOD"] == "POST" and environ["PATH_INFO"] == "/support/login":
            inside.release()
            release.wait(10)
        return Response("ok")(environ, start_response)

    gate = SignInGate(app, running=1, waiting=1)
    statuses: list[int] = []

    def post() -> None:
        statuses.append(Client(gate).post("/support/login").status_code)

    first, second = threading.Thread(target=post), threading.Thread(target=post)
    first.start()
    assert inside.acquire(timeout=5)  # the first is being handled
    second.start()
    time.sleep(0.2)  # the second waits behind it
    third = Client(gate).post("/support/login")
    assert third.status_code == 503 and third.headers["Retry-After"] == "5"
    assert Client(gate).get("/support/login").status_code == 200  # GETs are not gated
    assert Client(gate).post("/webhooks/stripe").status_code == 200
    release.set()
    first.join(5)
    second.join(5)
    assert sorted(statuses) == [200, 200]
    assert seen.count("/support/login") == 3  # two POSTs and the GET; never the 503'd one
