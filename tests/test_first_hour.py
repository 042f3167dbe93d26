"""What a new user, an on-call engineer and a support agent tripped over in their first hour
(each test failed before its fix)."""

from __future__ import annotations

import pytest
from prometheus_client.parser import text_string_to_metric_families

from config import load_config
from tests.pages_support import SUPPORT_USERS, sign_in
from tests.support import GYM, event, post_event


@pytest.fixture
def config(env, monkeypatch):  # type: ignore[no-untyped-def]
    monkeypatch.setenv("SUPPORT_USERS", SUPPORT_USERS)
    env["SUPPORT_USERS"] = SUPPORT_USERS
    return load_config()


def gauge(client, name: str, **labels: str) -> float:  # type: ignore[no-untyped-def]
    text = client.get("/metrics").get_data(as_text=True)
    return sum(s.value for f in text_string_to_metric_families(text) for s in f.samples
               if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()))


def test_a_subscription_billed_to_an_account_has_its_own_visible_outcome(venues, client, api,
                                                                          work):
    payload = event("customer.subscription.created", {
        "id": "sub_1Acct00000000", "object": "subscription", "customer": None,
        "customer_account": "acct_1Payer000000", "status": "active"}, account=GYM)
    assert post_event(client, payload).status_code == 200
    work()

    row = api.get(f"/api/events/{payload['id']}").json
    assert (row["status"], row["outcome"]) == ("ignored", "customer_account")
    assert "acct_1Payer000000" in row["last_error"]
    assert gauge(client, "mismatch_events_by_outcome", outcome="customer_account") == 1
    sign_in(client)
    page = client.get("/support").get_data(as_text=True)
    assert "billed to an account, not a customer" in page and "acct_1Payer000000" in page


def test_a_deleted_customer_is_purged_from_the_mirror(venues, client, api, work, db):
    from sqlalchemy import func, select

    from db import Notification, StripeCustomer
    from tests.support import customer, subscription

    for payload in (event("customer.created", customer("cus_1Gone", "gone@example.com",
                                                       name="Gone Person"), account=GYM),
                    event("customer.subscription.created",
                          subscription("sub_1Gone", "cus_1Gone"), account=GYM)):
        assert post_event(client, payload).status_code == 200
    work()
    with db.session() as s:
        notices = s.scalar(select(func.count()).select_from(Notification))
    assert notices == 1
    assert post_event(client, event("customer.deleted", customer(
        "cus_1Gone", "gone@example.com", name="Gone Person", deleted=True),
        account=GYM)).status_code == 200
    work()

    with db.session() as s:
        row = s.scalar(select(StripeCustomer).where(StripeCustomer.customer_id == "cus_1Gone"))
        assert (row.deleted, row.email, row.name) == (True, None, None)
        assert s.scalar(select(func.count()).select_from(Notification)) == notices
    [mismatch] = api.get("/api/mismatches").json["mismatches"]
    assert (mismatch["case"], mismatch["customer_email"]) == (3, "gone@example.com")


def test_a_member_of_an_unknown_venue_says_which_venue_and_how(api):
    response = api.put("/api/venues/acct_1Nowhere00000/members/m-1",
                       json={"email": "carl@example.com", "name": None,
                             "stripe_customer_id": None})
    assert response.status_code == 404
    assert "no venue acct_1Nowhere00000: create it first" in response.json["error"]


def test_mismatch_help_lists_only_our_options():
    from click.testing import CliRunner

    from listener.cli import main

    result = CliRunner().invoke(main, ["--help"])
    assert result.exit_code == 0
    for flask_option in ("--app", "--debug", "--env-file"):
        assert flask_option not in result.output
    assert "serve" in result.output and "hash-password" in result.output


def test_hash_password_prints_a_hash_support_users_accepts(env, monkeypatch):
    from click.testing import CliRunner
    from werkzeug.security import check_password_hash

    from listener.cli import main

    result = CliRunner().invoke(main, ["hash-password", "--user", "dana", "--password", "s3cret"])
    assert result.exit_code == 0, result.output
    entry = result.output.strip()
    name, hashed = entry.split(":", 1)
    assert name == "dana" and check_password_hash(hashed, "s3cret")
    assert load_config({**env, "SUPPORT_USERS": entry}).support_users == {"dana": hashed}


def _run(args: list[str], cwd, extra_env=None):  # type: ignore[no-untyped-def]
    import os
    import subprocess
    import sys
    from pathlib import Path

    env = {k: v for k, v in os.environ.items()
           if k not in ("DATABASE_URL", "REDIS_URL", "INSTANCE_PATH")}
    env.update(extra_env or {})
    return subprocess.run([str(Path(sys.executable).parent / "mismatch"), *args], cwd=cwd,
                          env=env, capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("command", [["sweep"], ["members", "import", "members.csv"],
                                     ["venues", "import", "venues.csv"]])
def test_a_command_run_elsewhere_says_so_in_one_line_and_creates_nothing(tmp_path, command):
    (tmp_path / "members.csv").write_text("account_id,member_ref,email,name,stripe_customer_id\n")
    (tmp_path / "venues.csv").write_text("account_id,name,admin_emails,livemode\n")
    before = sorted(p.name for p in tmp_path.iterdir())
    result = _run(command, tmp_path)
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "no database at sqlite:///" in lines[0] and "mismatch db upgrade" in lines[0]
    assert "Traceback" not in result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # no instance/ left behind


def test_serve_on_a_port_in_use_exits_non_zero_and_says_so(tmp_path):
    import socket

    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        result = _run(["serve", "--port", str(port)], tmp_path)
    assert result.returncode == 1
    assert f"port {port} on 127.0.0.1 is in use" in result.stderr
    assert f"PORT={port + 1}" in result.stderr


def test_an_event_that_waited_then_succeeded_keeps_no_stale_error(venues, client, api, work,
                                                                  caplog):
    import logging

    from tests.support import customer, subscription

    sub = event("customer.subscription.created", subscription("sub_1Wait", "cus_1Wait"),
                account=GYM)
    assert post_event(client, sub).status_code == 200
    caplog.set_level(logging.INFO)
    work()  # the customer is not mirrored and there is no Stripe key: it waits
    waited = api.get(f"/api/events/{sub['id']}").json
    assert waited["status"] in ("received", "failed") and waited["last_error"]
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], \
        [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert "Traceback" not in caplog.text

    assert post_event(client, event("customer.created", customer("cus_1Wait", "w@example.com"),
                                    account=GYM)).status_code == 200
    work()
    done = api.get(f"/api/events/{sub['id']}").json
    assert done["status"] == "processed" and done["last_error"] is None


def test_ctrl_c_on_serve_stops_the_embedded_redis_too(tmp_path):
    """`make run` then `make demo` in another terminal (the demo finds the service by itself:
    serve.json), then Ctrl-C: the demo's stories end as linked and cases 1-3, and nothing is
    left running."""
    import os
    import signal
    import subprocess
    import sys
    import time
    import urllib.request
    from pathlib import Path

    import redis

    from standins.localstripe import free_port

    def _alive(path: Path) -> bool:
        try:
            return bool(redis.Redis(unix_socket_path=str(path), socket_timeout=1).ping())
        except (redis.RedisError, OSError):
            return False

    port = free_port()
    env = {k: v for k, v in os.environ.items()
           if k not in ("DATABASE_URL", "REDIS_URL", "INSTANCE_PATH", "SUPPORT_USERS")}
    env.update(STRIPE_WEBHOOK_SECRETS="whsec_a", STRIPE_CONNECT_WEBHOOK_SECRETS="whsec_b")
    env["API_TOKEN"] = "serve-token"
    env.pop("STRIPE_PLATFORM_ACCOUNT", None)  # the Connect stories only: no localstripe here
    proc = subprocess.Popen([str(Path(sys.executable).parent / "mismatch"), "serve", "--port",
                             str(port)], cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                time.sleep(0.5)
        else:
            raise AssertionError("serve did not become ready")
        sockets = list((tmp_path / "instance").rglob("*.sock"))
        assert sockets and all(_alive(s) for s in sockets)
        demo = subprocess.run(  # as `make demo` runs it, from another shell in that folder
            [sys.executable, "-m", "standins.demo"], cwd=tmp_path, capture_output=True,
            text=True, timeout=120, env={  # no token, no secrets: it reads them from serve
                **{k: v for k, v in env.items() if k not in (
                    "API_TOKEN", "STRIPE_WEBHOOK_SECRETS", "STRIPE_CONNECT_WEBHOOK_SECRETS")},
                "PYTHONPATH": str(Path(__file__).parent.parent)})
        os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C: the terminal signals the whole group
        output, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, output
    assert demo.returncode == 0, demo.stdout + demo.stderr
    results = demo.stdout.split("result:")[1]
    assert "linked (no mismatch" in results
    assert all(f"case {n}" in results for n in (1, 2, 3)), results
    assert "sign in: user support, password" in output  # the development support user
    assert "Traceback" not in output  # each child stopped once, by serve
    assert not any(_alive(s) for s in sockets)
    assert not (tmp_path / "instance" / "serve.json").exists()
