"""The skeleton: health, readiness, schema constraints, configuration errors."""

from __future__ import annotations

import pytest
from sqlalchemy import inspect
from sqlalchemy.exc import IntegrityError

from config import ConfigError, load_config
from db import (
    Member,
    Mismatch,
    Notification,
    StripeCustomer,
    StripeEvent,
    Subscription,
    Venue,
    normalize_email,
)


def test_healthz(client):
    assert client.get("/healthz").json == {"status": "ok"}


def test_readyz_reports_both_dependencies(client):
    response = client.get("/readyz")
    assert response.status_code == 200
    assert response.json["checks"] == {"database": "ok", "redis": "ok"}


def test_readyz_names_the_dependency_that_is_down(env, monkeypatch, db, redis):
    from config import load_config
    from listener.app import create_app

    monkeypatch.setenv("REDIS_URL", "redis://127.0.0.1:1/0")
    app = create_app(load_config())
    response = app.test_client().get("/readyz")
    assert response.status_code == 503
    assert response.json["checks"]["database"] == "ok"
    assert response.json["checks"]["redis"].startswith("unreachable")
    assert "redis" in response.json["error"]


def test_migrations_create_every_table(db):
    names = set(inspect(db.engine).get_table_names())
    assert {"venues", "members", "stripe_customers", "stripe_events", "rejected_deliveries",
            "mismatches", "notifications", "subscriptions", "alembic_version"} <= names


def _venue(s, account="acct_1A"):
    v = Venue(account_id=account, name="Gym", admin_emails=["a@gym.test"], livemode=False)
    s.add(v)
    s.flush()
    return v


def _member(s, venue, ref, email="m@x.test", cus=None):
    m = Member(venue_id=venue.id, member_ref=ref, email=email,
               email_normalized=normalize_email(email), stripe_customer_id=cus)
    s.add(m)
    s.flush()
    return m


@pytest.mark.parametrize("duplicate", [
    "venue_account", "member_ref", "member_customer", "event_id", "mismatch_subscription",
    "customer_mirror", "subscription", "notification"])
def test_unique_constraints_reject_duplicates(db, duplicate):
    with db.session() as s:
        venue = _venue(s)
        _member(s, venue, "m1", cus="cus_1")
    with pytest.raises(IntegrityError), db.session() as s:
        venue = s.query(Venue).one()
        if duplicate == "venue_account":
            _venue(s)
        elif duplicate == "member_ref":
            _member(s, venue, "m1")
        elif duplicate == "member_customer":
            _member(s, venue, "m2", cus="cus_1")
        elif duplicate == "event_id":
            for _ in range(2):
                s.add(StripeEvent(event_id="evt_1", endpoint="platform", type="x", created=1,
                                  payload="{}"))
                s.flush()
        elif duplicate == "mismatch_subscription":
            for _ in range(2):
                s.add(Mismatch(account_id="acct_1A", livemode=False, subscription_id="sub_1",
                               case=3, customer_id="cus_9"))
                s.flush()
        elif duplicate == "customer_mirror":
            for _ in range(2):
                s.add(StripeCustomer(account_id="acct_1A", livemode=False, customer_id="cus_9"))
                s.flush()
        elif duplicate == "subscription":
            for _ in range(2):
                s.add(Subscription(account_id="acct_1A", livemode=False, subscription_id="sub_1",
                                   customer_id="cus_9", state="mismatch"))
                s.flush()
        elif duplicate == "notification":
            m = Mismatch(account_id="acct_1A", livemode=False, subscription_id="sub_1", case=3,
                         customer_id="cus_9")
            s.add(m)
            s.flush()
            for i in range(2):
                s.add(Notification(key=f"k{i}", mismatch_id=m.id, recipient="a@gym.test",
                                   kind="case_3"))
                s.flush()


def test_members_without_customer_ids_do_not_collide(db):
    with db.session() as s:
        venue = _venue(s)
        _member(s, venue, "m1")
        _member(s, venue, "m2")
    with db.session() as s:
        assert s.query(Member).count() == 2


@pytest.mark.parametrize("env_value, message", [
    ({"STRIPE_WEBHOOK_SECRETS": "sk_test_oops"}, "STRIPE_WEBHOOK_SECRETS"),
    ({"STRIPE_CONNECT_WEBHOOK_SECRETS": "whsec_a,nope"}, "STRIPE_CONNECT_WEBHOOK_SECRETS"),
    ({"SMTP_URL": "http://mail:25"}, "SMTP_URL"),
    ({"SMTP_URL": "smtp://mail:notaport"}, "SMTP_URL"),
    ({"STRIPE_WEBHOOK_TOLERANCE": "five"}, "STRIPE_WEBHOOK_TOLERANCE"),
    ({"DATABASE_URL": "mysql://x"}, "DATABASE_URL"),
    ({"STRIPE_PLATFORM_ACCOUNT": "cus_123"}, "STRIPE_PLATFORM_ACCOUNT"),
])
def test_malformed_configuration_names_the_variable(tmp_path, env_value, message):
    with pytest.raises(ConfigError, match=message):
        load_config({"INSTANCE_PATH": str(tmp_path), **env_value})


def test_smtp_url_parses_user_password_and_starttls(tmp_path):
    cfg = load_config({"INSTANCE_PATH": str(tmp_path),
                       "SMTP_URL": "smtp://user%40x:p%3Ass@mail.test:587?starttls=1"})
    assert (cfg.smtp.host, cfg.smtp.port, cfg.smtp.username, cfg.smtp.password,
            cfg.smtp.starttls) == ("mail.test", 587, "user@x", "p:ss", True)


def test_defaults_are_embedded(tmp_path):
    cfg = load_config({"INSTANCE_PATH": str(tmp_path)})
    assert cfg.database_url.startswith("sqlite:///") and cfg.redis_url is None
    assert cfg.webhook_tolerance == 300 and cfg.public_base_url == "http://localhost:5000"
