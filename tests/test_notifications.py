"""Mismatch notices end to end: signed events in, a real RQ worker, a real SMTP server
(aiosmtpd on 127.0.0.1) receiving the mail; assertions are on the bytes it received."""

from __future__ import annotations

import base64
import re
import shutil
from collections import Counter
from email import policy
from email.message import EmailMessage
from email.parser import BytesParser
from pathlib import Path

import pytest
from sqlalchemy import select, update

from config import load_config
from db import Notification
from notifications.links import read_link
from notifications.outbox import build_digests
from notifications.send import deliver, outbox_dir
from standins.localstripe import free_port
from tests.smtp_server import SmtpServer
from tests.support import (
    API_TOKEN,
    PLATFORM_ACCOUNT,
    customer,
    event,
    post_event,
    run_cli,
    subscription,
)
from workers.jobs import NOTICE
from workers.queue import enqueue

GYM = "acct_1MailGym000000000"
LIVE = "acct_1MailLive00000000"
ADMINS = ["owner@harbour.test", "Desk@Harbour.test"]
RECIPIENTS = sorted(a.lower() for a in ADMINS)
SUPPORT = "support@platform.test"
ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts" / "emails"


def _smtp_env(monkeypatch: pytest.MonkeyPatch, port: int) -> None:
    monkeypatch.setenv("SMTP_URL", f"smtp://127.0.0.1:{port}")
    monkeypatch.setenv("SUPPORT_EMAIL", SUPPORT)
    # Five immediate retries, so the burst worker runs every attempt in one go.
    monkeypatch.setenv("JOB_RETRY_INTERVALS", "0,0,0,0,0")


@pytest.fixture
def smtp(env, monkeypatch):  # type: ignore[no-untyped-def]
    """A running SMTP server; SMTP_URL points at it."""
    server = SmtpServer(free_port())
    server.start()
    _smtp_env(monkeypatch, server.port)
    yield server
    server.stop()


@pytest.fixture
def smtp_down(env, monkeypatch):  # type: ignore[no-untyped-def]
    """SMTP_URL points at a port nobody listens on (start() brings a server up there)."""
    server = SmtpServer(free_port())
    _smtp_env(monkeypatch, server.port)
    yield server
    server.stop()


@pytest.fixture
def config(env, request):  # type: ignore[no-untyped-def]
    """As conftest's, but after any SMTP fixture has set SMTP_URL."""
    for name in ("smtp", "smtp_down"):
        if name in request.fixturenames:
            request.getfixturevalue(name)
    return load_config()


# --- driving the flow -------------------------------------------------------------------------

def venue(api, account=GYM, *, name="Harbour Gym", livemode=False, digest=False,  # type: ignore[no-untyped-def]
          admins=ADMINS):
    response = api.put(f"/api/venues/{account}", json={
        "name": name, "admin_emails": admins, "livemode": livemode, "digest": digest})
    assert response.status_code in (200, 201), response.json


def member(api, ref, email, cus=None, account=GYM, name=None):  # type: ignore[no-untyped-def]
    response = api.put(f"/api/venues/{account}/members/{ref}", json={
        "email": email, "name": name or ref.title(), "stripe_customer_id": cus})
    assert response.status_code in (200, 201), response.json


def deliver_events(client, *payloads) -> None:  # type: ignore[no-untyped-def]
    for payload in payloads:
        response = post_event(client, payload)
        assert response.status_code == 200, response.json


def outside_subscription(client, cus, email, sub, *, account=GYM, livemode=False,  # type: ignore[no-untyped-def]
                         status="active", name="Test Customer"):
    """What Stripe sends when someone creates a subscription in the Dashboard."""
    account_kw = {"account": account} if account != PLATFORM_ACCOUNT else {}
    deliver_events(client,
                   event("customer.created", customer(cus, email, name=name), livemode=livemode,
                         **account_kw),
                   event("customer.subscription.created", subscription(sub, cus, status),
                         livemode=livemode, **account_kw))


def mismatch_ids(api) -> dict[str, int]:  # type: ignore[no-untyped-def]
    rows = api.get("/api/mismatches").json["mismatches"]
    return {row["subscription_id"]: row["id"] for row in rows}


def three_cases(api, client, work) -> None:  # type: ignore[no-untyped-def]
    """Case 1 (ann), case 2 (bob, trialing) and case 3 (eve) at the Harbour Gym."""
    venue(api)
    member(api, "m-ann", "ann@example.com", cus="cus_AnnLinked01", name="Ann Lee")
    member(api, "m-bob", "bob@example.com", name="Bob Stone")
    work()
    outside_subscription(client, "cus_AnnNew0001", "ann@example.com", "sub_Case1Ann0001",
                         name="Ann Lee")
    outside_subscription(client, "cus_BobNew0001", "Bob@Example.com", "sub_Case2Bob0001",
                         status="trialing", name="Bob Stone")
    outside_subscription(client, "cus_EveNew0001", "eve@example.com", "sub_Case3Eve0001",
                         name="Eve Adams")
    work()


def text_part(msg: EmailMessage) -> str:
    part = msg.get_body(preferencelist=("plain",))
    assert part is not None
    return part.get_content().replace("\r\n", "\n")


def flat(text: str) -> str:
    """The text with line wrapping undone, to look for phrases."""
    return " ".join(text.split())


def html_part(msg: EmailMessage) -> str:
    part = msg.get_body(preferencelist=("html",))
    assert part is not None
    return part.get_content().replace("\r\n", "\n")


def by_subscription(messages: list[EmailMessage]) -> dict[str, list[EmailMessage]]:
    out: dict[str, list[EmailMessage]] = {}
    for msg in messages:
        out.setdefault(str(msg["X-Stripe-Subscription"]), []).append(msg)
    return out


def rows(db, **where) -> list[Notification]:  # type: ignore[no-untyped-def]
    with db.session() as s:
        query = select(Notification).order_by(Notification.id)
        for key, value in where.items():
            query = query.where(getattr(Notification, key) == value)
        return list(s.scalars(query))


# --- one notice per admin per mismatch --------------------------------------------------------

def test_each_admin_gets_one_notice_per_mismatch_with_the_right_case(smtp, api, client, work,
                                                                     db):
    three_cases(api, client, work)
    ids = mismatch_ids(api)
    assert len(smtp.messages) == 6
    assert Counter((m["To"], m["X-Mismatch-Id"]) for m in smtp.messages) == Counter(
        {(r, str(i)): 1 for r in RECIPIENTS for i in ids.values()})
    assert sorted(e[0] for e in smtp.mailbox.envelopes) == sorted(RECIPIENTS * 3)
    expected_case = {"sub_Case1Ann0001": "1", "sub_Case2Bob0001": "2", "sub_Case3Eve0001": "3"}
    for sub, messages in by_subscription(smtp.messages).items():
        assert {m["X-Mismatch-Case"] for m in messages} == {expected_case[sub]}
        assert {m["X-Mismatch-Id"] for m in messages} == {str(ids[sub])}
        assert {m["X-Stripe-Account"] for m in messages} == {GYM}
    for msg in smtp.messages:
        assert msg.get_content_type() == "multipart/alternative"
        assert [p.get_content_type() for p in msg.iter_parts()] == ["text/plain", "text/html"]
        assert msg["From"] == "Mismatch Detector <mismatch@venues.test>"
        assert msg["Auto-Submitted"] == "auto-generated"
        assert f"Case {msg['X-Mismatch-Case']}" in msg["Subject"]
    sent = rows(db)
    assert [(n.status, n.attempts) for n in sent] == [("sent", 1)] * 6
    assert {n.message_id for n in sent} == {m["Message-ID"] for m in smtp.messages}


def test_message_id_is_derived_from_mismatch_and_recipient(smtp, api, client, work):
    three_cases(api, client, work)
    ids = mismatch_ids(api)
    message_ids = [m["Message-ID"] for m in smtp.messages]
    assert len(set(message_ids)) == 6
    for msg in smtp.messages:
        assert re.fullmatch(rf"<mismatch-{msg['X-Mismatch-Id']}-[0-9a-f]{{24}}@venues\.test>",
                            msg["Message-ID"])
    assert set(ids.values()) == {int(m["X-Mismatch-Id"]) for m in smtp.messages}


def test_text_part_states_every_id_the_steps_and_the_links(smtp, api, client, work, config):
    three_cases(api, client, work)
    ids = mismatch_ids(api)
    subs = by_subscription(smtp.messages)

    case1 = text_part(subs["sub_Case1Ann0001"][0])
    assert re.search(r"^Intended member email: +ann@example\.com$", case1, re.M)
    assert re.search(r"^New Stripe Customer ID: +cus_AnnNew0001$", case1, re.M)
    assert re.search(r"^Linked Stripe Customer ID: +cus_AnnLinked01$", case1, re.M)
    assert re.search(r"^Subscription ID: +sub_Case1Ann0001 \(active\)$", case1, re.M)
    assert re.search(r"^Member in the booking system: +m-ann \(Ann Lee\)$", case1, re.M)
    for needle in ("Cancel the outside subscription", "invite link", "assign the membership",
                   "charges the member immediately",
                   "not in the Stripe Dashboard or through a Payment Link",
                   f"http://mismatch.test/mismatches/{ids['sub_Case1Ann0001']}",
                   f"https://dashboard.stripe.com/{GYM}/test/subscriptions/sub_Case1Ann0001",
                   f"https://dashboard.stripe.com/{GYM}/test/customers/cus_AnnLinked01",
                   "If ann@example.com was charged"):
        assert needle in flat(case1), needle

    # The mismatch link is signed for that mismatch and account (the admin's permission).
    link = re.search(r"^  (http://mismatch\.test/mismatches/\d+\?t=\S+)$", case1, re.M)
    assert link, case1
    grant = read_link(config, link.group(1).split("?t=")[1])
    assert (grant.mismatch_id, grant.account_id) == (ids["sub_Case1Ann0001"], GYM)
    assert f'href="{link.group(1)}"' in html_part(subs["sub_Case1Ann0001"][0])

    case2 = text_part(subs["sub_Case2Bob0001"][0])
    assert re.search(r"^Intended member email: +Bob@Example\.com$", case2, re.M)
    assert re.search(r"^New Stripe Customer ID: +cus_BobNew0001$", case2, re.M)
    assert re.search(r"^Subscription ID: +sub_Case2Bob0001 \(trialing\)$", case2, re.M)
    assert re.search(r"^Member in the booking system: +m-bob \(Bob Stone\)$", case2, re.M)
    for needle in ("No refund needed: the subscription is still in its free trial",
                   "membership invite link", "assigning charges the member immediately",
                   f"http://mismatch.test/mismatches/{ids['sub_Case2Bob0001']}"):
        assert needle in flat(case2), needle
    assert "Linked Stripe Customer ID" not in case2

    case3 = text_part(subs["sub_Case3Eve0001"][0])
    assert re.search(r"^Intended member email: +eve@example\.com$", case3, re.M)
    assert re.search(r"^New Stripe Customer ID: +cus_EveNew0001$", case3, re.M)
    assert re.search(r"^Subscription ID: +sub_Case3Eve0001 \(active\)$", case3, re.M)
    for needle in ("isn't a member of Harbour Gym", "create an account",
                   f"http://mismatch.test/mismatches/{ids['sub_Case3Eve0001']}"):
        assert needle in flat(case3), needle
    # Readable on its own: no markup, no overlong lines except the links.
    for body in (case1, case2, case3):
        assert "<" not in body and "&" not in body
        for line in body.splitlines():
            assert len(line) <= 76 or line.strip().startswith("http"), line


def test_html_is_inlined_self_contained_and_has_the_ids_and_buttons(smtp, api, client, work):
    three_cases(api, client, work)
    for msg in smtp.messages:
        html = html_part(msg)
        assert "<style" not in html and 'style="' in html
        lowered = html.lower()
        for remote in ("<img", "<link", "<script", "url(", "@import", "<iframe"):
            assert remote not in lowered, remote
        assert re.findall(r'(?:src|background)="', lowered) == []
        assert str(msg["X-Stripe-Subscription"]) in html
        assert 'class="button"' in html and "Open the mismatch" in html
        assert f"https://dashboard.stripe.com/{GYM}/test/subscriptions/" in html
        assert "font-family" in html and "monospace" in html
        # No mbox-style quoting of lines that begin with "From ".
        assert ">From " not in html and ">From " not in text_part(msg)


def test_dashboard_links_go_to_the_right_account_and_mode(smtp, api, client, work):
    venue(api, LIVE, name="Live Club", livemode=True, admins=["boss@live.test"])
    venue(api, PLATFORM_ACCOUNT, name="Platform Studio", admins=["boss@platform.test"])
    venue(api, GYM, admins=["boss@harbour.test"])
    outside_subscription(client, "cus_LiveOne0001", "lee@example.com", "sub_LiveOne0001",
                         account=LIVE, livemode=True)
    outside_subscription(client, "cus_Plat0001", "pat@example.com", "sub_Plat0001",
                         account=PLATFORM_ACCOUNT)
    outside_subscription(client, "cus_TestOne0001", "tess@example.com", "sub_TestOne0001")
    work()
    subs = {k: v[0] for k, v in by_subscription(smtp.messages).items()}
    assert set(subs) == {"sub_LiveOne0001", "sub_Plat0001", "sub_TestOne0001"}

    live = subs["sub_LiveOne0001"]
    live_link = f"https://dashboard.stripe.com/{LIVE}/subscriptions/sub_LiveOne0001"
    assert live_link in text_part(live) and f'href="{live_link}"' in html_part(live)
    assert "/test/" not in text_part(live) and "/test/" not in html_part(live)
    assert "test mode" not in live["Subject"].lower()

    test = subs["sub_TestOne0001"]
    test_link = f"https://dashboard.stripe.com/{GYM}/test/subscriptions/sub_TestOne0001"
    assert test_link in text_part(test) and f'href="{test_link}"' in html_part(test)
    assert "test mode" in test["Subject"].lower()
    assert f"https://dashboard.stripe.com/{GYM}/test/customers/cus_TestOne0001" in \
        text_part(test)

    # The platform's own account: no /acct_ prefix, the Dashboard is already on it.
    platform = subs["sub_Plat0001"]
    assert "https://dashboard.stripe.com/test/subscriptions/sub_Plat0001" in text_part(platform)
    assert PLATFORM_ACCOUNT + "/" not in text_part(platform)


# --- content variations -----------------------------------------------------------------------

def test_every_value_is_escaped_in_html_and_plain_in_text(smtp, api, client, work):
    venue(api, name="Joe's <Gym> & Spa", admins=["boss@harbour.test"])
    evil_email = "<script>alert(1)</script>@evil.test"
    evil_name = '<b onmouseover="x()">Mallory</b>'
    member(api, "m-evil", evil_email, cus="cus_EvilLinked01", name="<i>Ev</i>")
    work()
    outside_subscription(client, "cus_Evil0001", evil_email, "sub_Evil0001", name=evil_name)
    work()
    [msg] = smtp.messages
    html = html_part(msg)
    assert "<script" not in html.lower() and "<b " not in html and "<i>" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;@evil.test" in html
    assert "&lt;b onmouseover=" in html and "&lt;i&gt;Ev&lt;/i&gt;" in html
    assert "Joe's &lt;Gym&gt; &amp; Spa" in html
    text = text_part(msg)
    assert evil_email in text and evil_name in text and "Joe's <Gym> & Spa" in text
    assert "&lt;" not in text and "&amp;" not in text
    assert msg["Subject"].startswith("[Joe's <Gym> & Spa] Case 1")
    assert "script" not in msg["Subject"]


def test_several_candidates_are_listed(smtp, api, client, work):
    venue(api, admins=["boss@harbour.test"])
    member(api, "m-parent", "family@example.com", cus="cus_Parent0001")
    member(api, "m-child", "Family@Example.com")
    work()
    outside_subscription(client, "cus_Family0001", "family@example.com", "sub_Family0001")
    work()
    [msg] = smtp.messages
    assert msg["X-Mismatch-Case"] == "1"
    text, html = text_part(msg), html_part(msg)
    assert "2 members of Harbour Gym share this email" in flat(text)
    assert "member m-parent, family@example.com, Stripe Customer ID: cus_Parent0001" in text
    assert "member m-child, Family@Example.com, Stripe Customer ID: not linked yet" in text
    assert "share this email" in html and "m-parent" in html and "m-child" in html


def test_customer_without_email_is_case_3_and_the_notice_says_so(smtp, api, client, work):
    venue(api, admins=["boss@harbour.test"])
    outside_subscription(client, "cus_NoMail0001", None, "sub_NoMail0001", name="Walk In")
    work()
    [msg] = smtp.messages
    assert msg["X-Mismatch-Case"] == "3"
    text, html = text_part(msg), html_part(msg)
    assert re.search(r"^Intended member email: +none - the Stripe customer has no email$",
                     text, re.M)
    assert "has no email address" in text and '("Walk In")' in flat(text)
    assert "has no email address" in html and "Walk In" in html
    assert "cus_NoMail0001" in text and "sub_NoMail0001" in text


def test_refund_advice_follows_the_subscription_status(smtp, api, client, work):
    venue(api, admins=["boss@harbour.test"])
    outside_subscription(client, "cus_Trial0001", "t@example.com", "sub_Trial0001",
                         status="trialing")
    outside_subscription(client, "cus_Paid0001", "p@example.com", "sub_Paid0001",
                         status="active")
    work()
    subs = {k: flat(text_part(v[0])) for k, v in by_subscription(smtp.messages).items()}
    assert "No refund needed: the subscription is still in its free trial" in \
        subs["sub_Trial0001"]
    assert "If p@example.com was charged" in subs["sub_Paid0001"]
    assert "No refund is needed if the subscription was still trialing" in subs["sub_Paid0001"]


# --- exactly one ------------------------------------------------------------------------------

def test_duplicate_and_later_events_send_nothing_new(smtp, api, client, work, db):
    venue(api)
    created = event("customer.subscription.created",
                    subscription("sub_Dup0001", "cus_Dup0001"), account=GYM)
    deliver_events(client, event("customer.created", customer("cus_Dup0001", "d@example.com"),
                                 account=GYM), created)
    work()
    assert len(smtp.messages) == 2
    deliver_events(client, created, created,
                   event("customer.subscription.updated",
                         subscription("sub_Dup0001", "cus_Dup0001", "past_due"), account=GYM))
    work()
    # The sweeper re-queueing everything pending must not send anything either.
    for n in rows(db):
        enqueue(load_config(), NOTICE, n.id)
    work()
    assert len(smtp.messages) == 2
    assert len(rows(db)) == 2


def test_a_new_case_for_the_same_mismatch_is_a_new_notice(smtp, api, client, work):
    venue(api, admins=["boss@harbour.test"])
    outside_subscription(client, "cus_Later0001", "later@example.com", "sub_Later0001")
    work()
    member(api, "m-later", "later@example.com")  # now a member without a customer: case 2
    work()
    assert [m["X-Mismatch-Case"] for m in smtp.messages] == ["3", "2"]
    assert len({m["X-Mismatch-Id"] for m in smtp.messages}) == 1
    assert smtp.messages[0]["Message-ID"] != smtp.messages[1]["Message-ID"]


def test_a_resend_carries_the_same_message_id(smtp, api, client, work, db, config, redis):
    venue(api, admins=["boss@harbour.test"])
    outside_subscription(client, "cus_Again0001", "again@example.com", "sub_Again0001")
    work()
    [first] = smtp.messages
    [row] = rows(db)
    # As if the worker died after the server's 250 and before our commit.
    with db.session() as s:
        s.execute(update(Notification).where(Notification.id == row.id)
                  .values(status="pending"))
    assert deliver(config, db, redis, row.id) == "sent"
    assert deliver(config, db, redis, row.id) == "already_sent"
    assert len(smtp.messages) == 2
    assert smtp.messages[1]["Message-ID"] == first["Message-ID"]


def test_a_row_being_sent_by_another_job_is_left_to_it(smtp, api, client, work, db, config,
                                                       redis):
    venue(api, admins=["boss@harbour.test"])
    outside_subscription(client, "cus_Race0001", "race@example.com", "sub_Race0001")
    work()
    [row] = rows(db)
    with db.session() as s:  # owed again, and another job is in the middle of sending it
        s.execute(update(Notification).values(status="pending"))
    held = redis.lock(f"mismatch:notification-lock:{row.id}", timeout=30)
    assert held.acquire(blocking=False)
    assert deliver(config, db, redis, row.id) == "in_progress"
    assert len(smtp.messages) == 1 and rows(db)[0].status == "pending"
    held.release()
    assert deliver(config, db, redis, row.id) == "sent"
    assert len(smtp.messages) == 2


def test_server_refusing_for_a_while_then_accepting_delivers_exactly_once(smtp, api, client,
                                                                          work, db):
    smtp.mailbox.refuse_next = 3
    venue(api)
    outside_subscription(client, "cus_Busy0001", "busy@example.com", "sub_Busy0001")
    work()
    assert smtp.mailbox.data_attempts == 5
    assert sorted(m["To"] for m in smtp.messages) == RECIPIENTS
    sent = rows(db)
    assert [n.status for n in sent] == ["sent", "sent"]
    assert sum(n.attempts for n in sent) == 5
    retried = [n for n in sent if n.attempts > 1]
    assert retried and all("451" in (n.last_error or "") for n in retried)


def test_server_down_for_good_leaves_the_row_failed_with_the_reason(smtp_down, api, client,
                                                                    work, db, config, app):
    venue(api, admins=["boss@harbour.test"])
    outside_subscription(client, "cus_Down0001", "down@example.com", "sub_Down0001")
    work()
    [row] = rows(db)
    assert row.status == "failed"
    assert row.attempts == 1 + len(config.job_retry_intervals)
    assert "Connection refused" in row.last_error or "ConnectionRefused" in row.last_error
    assert row.sent_at is None
    # Never lost: once the server is back, the operator re-queues it and it goes out once.
    smtp_down.start()
    result = run_cli("retry-notices")
    assert result.exit_code == 0 and "queued 1 failed notices again" in result.output
    enqueue(config, NOTICE, row.id)  # and a stray duplicate job changes nothing
    work()
    [msg] = smtp_down.messages
    assert msg["X-Mismatch-Case"] == "3"
    [row] = rows(db)
    assert row.status == "sent" and row.message_id == msg["Message-ID"]


def test_permanent_refusal_fails_at_once_without_retrying(smtp, api, client, work, db):
    smtp.mailbox.reject_rcpt = "550 5.1.1 Mailbox unavailable"
    venue(api, admins=["gone@harbour.test"])
    outside_subscription(client, "cus_Gone0001", "gone@example.com", "sub_Gone0001")
    work()
    [row] = rows(db)
    assert (row.status, row.attempts) == ("failed", 1)
    assert "550" in row.last_error
    assert smtp.messages == []


# --- support alerts ---------------------------------------------------------------------------

def test_unrouted_events_alert_support_once_per_account_per_day(smtp, api, client, work):
    for n in range(3):
        deliver_events(client, event("customer.subscription.created",
                                     subscription(f"sub_Lost000{n}", "cus_Lost0001"),
                                     account="acct_1Unknown00000001"))
    deliver_events(client, event("customer.subscription.created",
                                 subscription("sub_Other0001", "cus_Other0001"),
                                 account="acct_1Unknown00000002"))
    work()
    assert sorted(m["X-Stripe-Account"] for m in smtp.messages) == [
        "acct_1Unknown00000001", "acct_1Unknown00000002"]
    for msg in smtp.messages:
        assert msg["To"] == SUPPORT
        assert msg["X-Mismatch-Case"] is None
        assert msg["X-Stripe-Account"] in text_part(msg)
        assert "no venue" in msg["Subject"]


# --- daily digest -----------------------------------------------------------------------------

def test_digest_venues_get_one_summary_per_admin(smtp, api, client, work, db, app):
    venue(api, digest=True)
    outside_subscription(client, "cus_DigA0001", "a@example.com", "sub_DigA0001")
    outside_subscription(client, "cus_DigB0001", None, "sub_DigB0001")
    work()
    assert smtp.messages == []
    assert {n.status for n in rows(db)} == {"awaiting_digest"}

    result = run_cli("digest")
    assert result.exit_code == 0, result.output
    assert "queued 2 digest emails" in result.output
    work()
    assert sorted(m["To"] for m in smtp.messages) == RECIPIENTS
    for msg in smtp.messages:
        text = text_part(msg)
        assert "2 subscriptions created outside the booking system" in text
        for needle in ("sub_DigA0001", "cus_DigA0001", "a@example.com", "sub_DigB0001",
                       "none - the Stripe customer has no email",
                       f"https://dashboard.stripe.com/{GYM}/test/subscriptions/sub_DigA0001"):
            assert needle in text, needle
        assert msg["X-Mismatch-Digest"] == "2"
    items = rows(db, kind="digest_item")
    assert len(items) == 4 and {n.status for n in items} == {"sent"}

    assert "queued 0 digest emails" in run_cli("digest").output
    outside_subscription(client, "cus_DigC0001", "c@example.com", "sub_DigC0001")
    work()
    for notification_id in build_digests(db):
        enqueue(load_config(), NOTICE, notification_id)
    work()
    later = smtp.messages[2:]
    assert len(later) == 2 and all("sub_DigC0001" in text_part(m) for m in later)
    assert all("sub_DigA0001" not in text_part(m) for m in later)


# --- the local outbox -------------------------------------------------------------------------

def test_without_smtp_mail_lands_in_the_local_outbox_and_page(api, client, work, config):
    shutil.rmtree(outbox_dir(config), ignore_errors=True)
    three_cases(api, client, work)
    files = sorted(outbox_dir(config).glob("*.eml"))
    assert len(files) == 6
    parsed = [BytesParser(policy=policy.default).parsebytes(f.read_bytes()) for f in files]
    assert Counter(m["X-Mismatch-Case"] for m in parsed) == {"1": 2, "2": 2, "3": 2}

    basic = base64.b64encode(f"anyone:{API_TOKEN}".encode()).decode()
    response = client.get("/outbox")  # for staff only: to the sign-in page
    assert response.status_code == 302
    assert response.headers["Location"] == "/support/login?next=/outbox"
    assert client.get("/outbox", headers={"Authorization": "Basic eDp3cm9uZw=="}
                      ).status_code == 401
    page = client.get("/outbox", headers={"Authorization": f"Basic {basic}"})
    assert page.status_code == 200
    body = page.get_data(as_text=True)
    names = re.findall(r'href="/outbox/(\d{8}-[a-z0-9_]+)"', body)
    assert names == sorted((f.stem for f in files), reverse=True)  # newest first
    assert "Case 1" in body and "owner@harbour.test" in body

    view = api.get(f"/outbox/{names[0]}")
    assert view.status_code == 200
    assert "Have these ready" not in view.get_data(as_text=True)  # HTML only in the iframe
    assert "HAVE THESE READY" in view.get_data(as_text=True)
    html = api.get(f"/outbox/{names[0]}/html")
    assert html.status_code == 200 and "Have these ready" in html.get_data(as_text=True)
    assert "default-src 'none'" in html.headers["Content-Security-Policy"]
    raw = api.get(f"/outbox/{names[0]}/raw")
    assert raw.status_code == 200 and raw.data == (outbox_dir(config) / f"{names[0]}.eml"
                                                   ).read_bytes()
    assert api.get("/outbox/..%2Fsecret_key").status_code == 404
    assert api.get("/outbox/99999999-case_1").status_code == 404


def test_outbox_page_is_gone_when_smtp_is_configured(smtp, api):
    assert api.get("/outbox").status_code == 404


# --- screenshots ------------------------------------------------------------------------------

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (apt-get install -y "
                                             "chromium); CI installs it")
def test_screenshots_of_the_emails(smtp, api, client, work, db, config):
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
    three_cases(api, client, work)
    venue(api, LIVE, name="Riverside Climbing", livemode=True, digest=True,
          admins=["boss@riverside.test"])
    for n, (email, status) in enumerate([("kim@example.com", "active"), (None, "trialing")]):
        outside_subscription(client, f"cus_Riv{n}0000001", email, f"sub_Riv{n}0000001",
                             account=LIVE, livemode=True, status=status)
    work()
    for notification_id in build_digests(db):
        enqueue(config, NOTICE, notification_id)
    work()

    wanted: dict[str, EmailMessage] = {}
    for msg in smtp.messages:
        if msg["To"] == "owner@harbour.test" and msg["X-Mismatch-Case"]:
            wanted[f"case_{msg['X-Mismatch-Case']}"] = msg
        elif msg["X-Mismatch-Digest"]:
            wanted["digest"] = msg
    assert set(wanted) == {"case_1", "case_2", "case_3", "digest"}

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    requests: list[str] = []
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=[
            "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
            "--disable-component-update", "--disable-sync", "--no-first-run"])
        try:
            for width, suffix in ((760, ""), (390, "-mobile")):
                page = browser.new_page(viewport={"width": width, "height": 600})
                page.on("request", lambda r: requests.append(r.url))
                for name, msg in sorted(wanted.items()):
                    html = html_part(msg)
                    (ARTIFACTS / f"{name}.html").write_text(html)
                    (ARTIFACTS / f"{name}.txt").write_text(text_part(msg))
                    page.set_content(html, wait_until="load")
                    page.screenshot(path=str(ARTIFACTS / f"{name}{suffix}.png"),
                                    full_page=True)
                page.close()
        finally:
            browser.close()
    assert [u for u in requests if not u.startswith(("about:", "data:"))] == []
    for name in wanted:
        assert (ARTIFACTS / f"{name}.png").stat().st_size > 10_000

