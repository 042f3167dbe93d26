"""The support console through Flask's test client: who may open what, CSRF, the signed links
in notices, and the actions (resolve, re-check, replay) against the real queue and worker."""

from __future__ import annotations

import time
from dataclasses import replace
from urllib.parse import urlsplit

import pytest
from sqlalchemy import select, update

from config import ConfigError, load_config
from db import Member, Mismatch, StripeEvent, normalize_email
from notifications.links import (
    LinkExpired,
    LinkInvalid,
    link_token,
    mismatch_link,
    read_link,
)
from tests.pages_support import (
    CLUB,
    GYM,
    STAFF_PASSWORD,
    STAFF_USER,
    SUPPORT_USERS,
    build_scene,
    csrf_from,
    sign_in,
)
from tests.support import customer, event, post_event, sign
from workers.queue import get_queue

DAY = 86400


@pytest.fixture
def config(env, monkeypatch):  # type: ignore[no-untyped-def]
    """The suite's config plus two support users (overrides conftest's `config`)."""
    monkeypatch.setenv("SUPPORT_USERS", SUPPORT_USERS)
    env["SUPPORT_USERS"] = SUPPORT_USERS
    return load_config()


@pytest.fixture
def scene(api, client, work, db):  # type: ignore[no-untyped-def]
    return build_scene(api, client, work, db)


def _ids_of(config, token, max_age=None):  # type: ignore[no-untyped-def]
    grant = read_link(config, token, max_age)
    return grant.mismatch_id, grant.account_id


def page(response) -> str:  # type: ignore[no-untyped-def]
    return response.get_data(as_text=True)


def path_of(url: str) -> str:
    """The path and query of a link, as the test client requests it."""
    parts = urlsplit(url)
    return f"{parts.path}?{parts.query}" if parts.query else parts.path


def open_link(client, config, mismatch_id: int, account: str):  # type: ignore[no-untyped-def]
    """What a venue admin's browser does with the link in the notice."""
    response = client.get(path_of(mismatch_link(config, mismatch_id, account)))
    assert response.status_code == 303, page(response)
    assert response.headers["Location"] == f"/mismatches/{mismatch_id}"
    return client.get(f"/mismatches/{mismatch_id}")


def mismatch_row(db, mismatch_id: int) -> Mismatch:  # type: ignore[no-untyped-def]
    with db.session() as s:
        m = s.get(Mismatch, mismatch_id)
        assert m is not None
        return m


# --- links --------------------------------------------------------------------------------------

def test_link_carries_mismatch_and_account_and_expires(config):
    url = mismatch_link(config, 42, GYM)
    assert url.startswith("http://mismatch.test/mismatches/42?t=")
    token = url.split("?t=", 1)[1]
    assert _ids_of(config, token, config.mismatch_link_max_age) == (42, GYM)
    assert config.mismatch_link_max_age == 14 * DAY

    old = link_token(config, 42, GYM, issued_at=time.time() - 15 * DAY)
    with pytest.raises(LinkExpired, match="expired.*14 days"):
        _ids_of(config, old, config.mismatch_link_max_age)
    assert _ids_of(config, old, 16 * DAY) == (42, GYM)  # max_age is the caller's
    fresh = link_token(config, 42, GYM, issued_at=time.time() - 13 * DAY)
    assert read_link(config, fresh).mismatch_id == 42

    with pytest.raises(LinkInvalid):
        _ids_of(config, token[:-2] + ("A" if token[-2] != "A" else "B") + token[-1],
                        DAY)
    with pytest.raises(LinkInvalid):
        _ids_of(config, "not-a-token", DAY)
    with pytest.raises(LinkInvalid):  # another SECRET_KEY (rotated): every link is void
        _ids_of(replace(config, secret_key="another-key"), token, DAY)
    with pytest.raises(LinkInvalid):  # dated in the future: not ours
        read_link(config, link_token(config, 42, GYM, issued_at=time.time() + 3600))
    # A few seconds ahead is clock skew between the worker and the web server.
    assert _ids_of(config, link_token(config, 42, GYM, issued_at=time.time() + 20),
                           DAY) == (42, GYM)


def test_support_users_and_link_age_are_checked_at_start_up(env):
    base = dict(env)
    config = load_config({**base, "SUPPORT_USERS": SUPPORT_USERS,
                          "MISMATCH_LINK_MAX_AGE": "3600"})
    assert set(config.support_users) == {"alice", "bob"}
    assert config.mismatch_link_max_age == 3600
    assert load_config(base).support_users == {}
    hashed = SUPPORT_USERS.split(",")[0].split(":", 1)[1]
    for bad in ("alice", "alice:plain-password", "al ice:" + hashed,
                f"alice:{hashed},alice:{hashed}", ":" + hashed):
        with pytest.raises(ConfigError, match="^SUPPORT_USERS: ") as info:
            load_config({**base, "SUPPORT_USERS": bad})
        assert "plain-password" not in str(info.value)
    with pytest.raises(ConfigError, match="MISMATCH_LINK_MAX_AGE"):
        load_config({**base, "MISMATCH_LINK_MAX_AGE": "two weeks"})
    with pytest.raises(ConfigError, match="MISMATCH_LINK_MAX_AGE"):
        load_config({**base, "MISMATCH_LINK_MAX_AGE": "5"})


# --- staff sign-in ------------------------------------------------------------------------------

def test_staff_pages_need_sign_in(client, scene):
    for url in ("/", "/support", "/mismatches", "/mismatches?status=all"):
        response = client.get(url, follow_redirects=True)
        assert response.request.path == "/support/login", url
        assert "Support sign-in" in page(response)
    response = client.get(f"/mismatches/{scene.case_1}")
    assert response.status_code == 403
    body = page(response)
    assert "You can&#39;t open this page" in body
    assert "sub_Ann" not in body and "cus_Ann" not in body and "ann@example.com" not in body
    # A POST with a valid CSRF token but no sign-in still gets nothing.
    token = csrf_from(page(client.get("/support/login")))
    response = client.post(f"/mismatches/{scene.case_1}/resolve",
                           data={"csrf_token": token, "note": "x"})
    assert response.status_code == 403
    response = client.post("/support/events/evt_x/replay", data={"csrf_token": token})
    assert response.status_code == 302 and "/support/login" in response.headers["Location"]


def test_sign_in_and_out(client, scene):
    response = sign_in(client, password="wrong")
    assert response.status_code == 401 and "Wrong user name or password" in page(response)
    response = sign_in(client, user="mallory", password=STAFF_PASSWORD)
    assert response.status_code == 401
    assert client.get("/support").status_code == 302

    response = sign_in(client, next_=f"/mismatches/{scene.case_3}")
    assert response.status_code == 303
    assert response.headers["Location"] == f"/mismatches/{scene.case_3}"
    body = page(client.get("/support"))
    assert "Support dashboard" in body and "Signed in as <strong>alice</strong>" in body
    # Staff see every venue.
    assert "sub_Bob0000000001" in page(client.get(f"/mismatches/{scene.case_3}"))
    assert "sub_Ann0000000001" in page(client.get(f"/mismatches/{scene.case_1}"))

    token = csrf_from(page(client.get("/support")))
    response = client.post("/support/logout", data={"csrf_token": token})
    assert response.status_code == 303
    assert client.get("/support").status_code == 302


def test_sign_in_never_redirects_off_site(client):
    for target in ("//evil.example/x", "https://evil.example/", "/\\evil.example"):
        response = sign_in(client, next_=target)
        assert response.status_code == 303 and response.headers["Location"] == "/support"
        client.post("/support/logout", data={"csrf_token": csrf_from(page(
            client.get("/support")))})


def test_staff_session_expires_and_removed_users_lose_access(client, app):
    sign_in(client)
    assert client.get("/support").status_code == 200
    with client.session_transaction() as session:
        session["staff_at"] = int(time.time()) - 13 * 3600
    assert client.get("/support").status_code == 302
    sign_in(client)
    with client.session_transaction() as session:
        session["staff"] = "carol"  # not (or no longer) in SUPPORT_USERS
    assert client.get("/support").status_code == 302


# --- CSRF ---------------------------------------------------------------------------------------

def test_every_form_needs_the_session_csrf_token(client, scene, db, config):
    response = client.post("/support/login", data={"username": STAFF_USER,
                                                   "password": STAFF_PASSWORD})
    assert response.status_code == 400 and "This form has expired" in page(response)
    assert client.get("/support").status_code == 302  # not signed in

    open_link(client, config, scene.case_1, GYM)
    for data in ({"note": "done"}, {"note": "done", "csrf_token": "forged"},
                 {"note": "done", "csrf_token": ""}):
        response = client.post(f"/mismatches/{scene.case_1}/resolve", data=data)
        assert response.status_code == 400
        response = client.post(f"/mismatches/{scene.case_1}/recheck", data=data)
        assert response.status_code == 400
    assert mismatch_row(db, scene.case_1).status == "open"
    assert len(get_queue(config)) == 0

    # A token from another browser's session is no good either.
    other = client.application.test_client()
    foreign = csrf_from(page(other.get("/support/login")))
    response = client.post(f"/mismatches/{scene.case_1}/resolve",
                           data={"note": "done", "csrf_token": foreign})
    assert response.status_code == 400
    assert mismatch_row(db, scene.case_1).status == "open"

    sign_in(client)
    response = client.post("/support/events/evt_1/replay", data={})
    assert response.status_code == 400
    response = client.post("/support/logout", data={})
    assert response.status_code == 400 and client.get("/support").status_code == 200


# --- venue admins: signed links -----------------------------------------------------------------

def test_notice_link_opens_its_mismatch_and_nothing_else(client, scene, config):
    response = open_link(client, config, scene.case_1, GYM)
    assert response.status_code == 200
    body = page(response)
    assert "A member is being billed on a second Stripe customer" in body
    for text in ("Case 1", "sub_Ann0000000001", "cus_AnnNew0000001", "cus_AnnOld0000001",
                 "m-ann", "Harbour Gym", GYM, "Test mode"):
        assert text in body, text
    assert "Dashboard</a>" not in body  # no staff navigation for a venue admin

    # The same browser cannot reach the other venue's mismatch, nor staff pages...
    for url in (f"/mismatches/{scene.case_3}", f"/mismatches/{scene.case_2}"):
        response = client.get(url)
        assert response.status_code == 403
        assert "sub_Bob" not in page(response) and "sub_Cara" not in page(response)
    assert client.get("/support").status_code == 302
    assert client.get(f"/mismatches?account={CLUB}").status_code == 302

    # ...not with the link's token on another id...
    token = mismatch_link(config, scene.case_1, GYM).split("?t=")[1]
    response = client.get(f"/mismatches/{scene.case_3}?t={token}")
    assert response.status_code == 403 and "different page" in page(response)
    assert "sub_Bob" not in page(response)
    # ...nor with a genuine token that names the wrong account for that mismatch.
    response = client.get(path_of(mismatch_link(config, scene.case_3, GYM)))
    assert response.status_code == 403 and "sub_Bob" not in page(response)
    assert client.get(f"/mismatches/{scene.case_3}").status_code == 403


def test_expired_and_broken_links_say_so(client, scene, config):
    expired = mismatch_link(config, scene.case_1, GYM, issued_at=time.time() - 15 * DAY)
    response = client.get(path_of(expired))
    body = page(response)
    assert response.status_code == 403
    assert "This link has expired" in body and "work for 14 days." in body
    assert "sub_Ann" not in body and "cus_Ann" not in body
    assert client.get(f"/mismatches/{scene.case_1}").status_code == 403  # no grant kept

    response = client.get(f"/mismatches/{scene.case_1}?t=garbage.token")
    assert response.status_code == 403 and "This link is not valid" in page(response)

    short = replace(config, mismatch_link_max_age=3600)
    client.application.config["MISMATCH"] = short  # MISMATCH_LINK_MAX_AGE=3600
    two_hours = mismatch_link(config, scene.case_1, GYM, issued_at=time.time() - 7200)
    response = client.get(path_of(two_hours))
    assert response.status_code == 403 and "1 hour" in page(response)


def test_grant_ends_when_the_link_would_have_expired(client, scene, config):
    link = mismatch_link(config, scene.case_1, GYM,
                         issued_at=time.time() - config.mismatch_link_max_age + 30)
    assert client.get(path_of(link)).status_code == 303
    assert client.get(f"/mismatches/{scene.case_1}").status_code == 200
    with client.session_transaction() as session:
        grants = session["grants"]
        account, expires = grants[str(scene.case_1)]
        assert account == GYM and expires - time.time() < 31
        grants[str(scene.case_1)] = [account, int(time.time()) - 1]
        session["grants"] = grants
    assert client.get(f"/mismatches/{scene.case_1}").status_code == 403


def test_venue_admin_resolves_only_their_mismatch(client, scene, db, config, api):
    body = page(open_link(client, config, scene.case_1, GYM))
    token = csrf_from(body)

    response = client.post(f"/mismatches/{scene.case_3}/resolve",
                           data={"csrf_token": token, "note": "not mine"})
    assert response.status_code == 403
    response = client.post(f"/mismatches/{scene.case_3}/recheck", data={"csrf_token": token})
    assert response.status_code == 403
    assert mismatch_row(db, scene.case_3).status == "open"
    assert len(get_queue(config)) == 0

    response = client.post(f"/mismatches/{scene.case_1}/resolve",
                           data={"csrf_token": token, "note": "   "}, follow_redirects=True)
    assert "Add a note" in page(response)
    assert mismatch_row(db, scene.case_1).status == "open"

    response = client.post(f"/mismatches/{scene.case_1}/resolve",
                           data={"csrf_token": token, "note": "Canceled and refunded;\n"
                                                             "invite link sent"},
                           follow_redirects=True)
    body = page(response)
    assert "Marked as resolved." in body and "Resolved · manual" in body
    m = api.get(f"/api/mismatches/{scene.case_1}").json
    assert (m["status"], m["resolution"]) == ("resolved", "manual")
    assert m["resolution_note"] == ("venue admin (email link): Canceled and refunded; "
                                    "invite link sent")
    response = client.post(f"/mismatches/{scene.case_1}/resolve",
                           data={"csrf_token": token, "note": "again"}, follow_redirects=True)
    assert "already resolved" in page(response)
    assert api.get(f"/api/mismatches/{scene.case_1}").json["resolution_note"].endswith(
        "invite link sent")


def test_staff_resolution_names_the_support_user(client, scene, api):
    sign_in(client)
    token = csrf_from(page(client.get(f"/mismatches/{scene.case_3}")))
    client.post(f"/mismatches/{scene.case_3}/resolve",
                data={"csrf_token": token, "note": "Person invited"})
    assert api.get(f"/api/mismatches/{scene.case_3}").json["resolution_note"] == \
        "alice (support): Person invited"


# --- re-check -----------------------------------------------------------------------------------

def test_recheck_now_queues_a_recheck_of_that_mismatch(client, scene, db, config, work, api):
    body = page(open_link(client, config, scene.case_3, CLUB))
    assert "Case 3" in body
    # The club adds bob as a member straight in its database (no API call, so nothing else
    # re-checks): only "Re-check now" can notice.
    with db.session() as s:
        from db import Venue

        club = s.scalar(select(Venue).where(Venue.account_id == CLUB))
        s.add(Member(venue_id=club.id, member_ref="m-bob", email="Bob@Example.com",
                     email_normalized=normalize_email("Bob@Example.com"), name="Bob"))
    response = client.post(f"/mismatches/{scene.case_3}/recheck",
                           data={"csrf_token": csrf_from(body)}, follow_redirects=True)
    assert response.request.path == f"/mismatches/{scene.case_3}"
    assert "Re-check queued" in page(response)
    queue = get_queue(config)
    assert len(queue) == 1 and queue.jobs[0].func_name == "workers.jobs.recheck_mismatch"
    work()
    m = api.get(f"/api/mismatches/{scene.case_3}").json
    assert (m["case"], m["member_ref"], m["status"]) == (2, "m-bob", "open")
    # The other venue's mismatches were not touched by this venue's re-check.
    assert api.get(f"/api/mismatches/{scene.case_1}").json["case"] == 1

    client.post(f"/mismatches/{scene.case_3}/resolve",
                data={"csrf_token": csrf_from(body), "note": "fixed"})
    response = client.post(f"/mismatches/{scene.case_3}/recheck",
                           data={"csrf_token": csrf_from(body)}, follow_redirects=True)
    assert "nothing to re-check" in page(response) and len(queue) == 0


# --- dashboard ----------------------------------------------------------------------------------

def test_dashboard_shows_mismatches_deliveries_and_queue(client, scene, db, config, work):
    # A rejected delivery and a failed event.
    body = '{"id": "evt_forged", "object": "event"}'
    client.post("/webhooks/stripe", data=body, headers={
        "Stripe-Signature": sign(body, "whsec_wrong"), "Content-Type": "application/json"})
    with db.session() as s:
        s.execute(update(StripeEvent).where(StripeEvent.type == "customer.created",
                                            StripeEvent.account_id == CLUB)
                  .values(status="failed", last_error="RuntimeError: boom", attempts=3))
        failed_id = s.scalar(select(StripeEvent.event_id).where(
            StripeEvent.status == "failed"))
    # And one event still waiting for the worker.
    post_event(client, event("customer.updated", customer("cus_Zed0000000001", None),
                             account=GYM))

    sign_in(client)
    body = page(client.get("/support"))
    assert "Harbour Gym" in body and "City Club" in body
    assert f'href="/mismatches?account={GYM}&amp;case=1"' in body
    assert f'href="/mismatches/{scene.case_2}"' in body
    assert "bad_signature" in body
    assert failed_id in body and "RuntimeError: boom" in body and ">Replay<" in body
    assert "Queue depth" in body
    stats = body.split('class="stats"')[1].split("</div>\n</div>")[0]
    assert ">1<" in stats  # the waiting event's job
    assert "1 not yet processed" in body

    response = client.post(f"/support/events/{failed_id}/replay",
                           data={"csrf_token": csrf_from(body)}, follow_redirects=True)
    assert f"{failed_id} queued for replay." in page(response)
    with db.session() as s:
        assert s.scalar(select(StripeEvent.status).where(
            StripeEvent.event_id == failed_id)) == "received"
    response = client.post(f"/support/events/{failed_id}/replay",
                           data={"csrf_token": csrf_from(body)}, follow_redirects=True)
    assert "is not a failed event" in page(response)
    work()
    with db.session() as s:
        assert s.scalar(select(StripeEvent.status).where(
            StripeEvent.event_id == failed_id)) == "processed"
    body = page(client.get("/support"))
    assert "No failed events." in body and "0 not yet processed" in body


def test_mismatch_list_filters(client, scene):
    sign_in(client)
    body = page(client.get(f"/mismatches?account={GYM}"))
    assert "sub_Ann0000000001" in body and "sub_Cara000000001" in body
    assert "sub_Bob0000000001" not in body
    body = page(client.get("/mismatches?case=3"))
    assert "sub_Bob0000000001" in body and "sub_Ann0000000001" not in body
    assert "No mismatches match." in page(client.get("/mismatches?status=resolved"))


# --- mismatch page content ----------------------------------------------------------------------

def test_mismatch_page_steps_links_and_timeline(client, scene, config):
    # The club's Stripe account happens to use the same customer id string: its event must
    # not show on the gym's page.
    post_event(client, event("customer.updated", customer("cus_AnnNew0000001", "x@club.test"),
                             account=CLUB, event_id="evt_ClubSameCus0001"))
    body = page(open_link(client, config, scene.case_1, GYM))
    dash = f"https://dashboard.stripe.com/{GYM}/test"
    for href in (f"{dash}/subscriptions/sub_Ann0000000001", f"{dash}/customers/cus_AnnNew0000001",
                 f"{dash}/customers/cus_AnnOld0000001"):
        assert f'href="{href}"' in body
    assert 'rel="noopener noreferrer"' in body
    for text in ("Before you start", "Cancel the outside subscription", "Refund if charged",
                 "Recreate the membership", "charges the member immediately",
                 "Paste into the ticket", "Escalate when"):
        assert text in body, text
    timeline = body.split('id="timeline"')[1]
    assert timeline.count('class="tl-item"') == 2
    assert "customer.subscription.created" in timeline and "customer.created" in timeline
    assert "evt_ClubSameCus0001" not in body
    assert f'href="{dash}/events/evt_' in timeline

    client2 = client.application.test_client()
    body = page(open_link(client2, config, scene.case_2, GYM))
    assert "send the member a membership invite link".lower() in body.lower()
    assert "m-cara" in body
    client3 = client.application.test_client()
    body = page(open_link(client3, config, scene.case_3, CLUB))
    assert "Invite the person to create an account" in body
    assert "no member of City Club has this email" in body


def test_member_data_is_escaped(client, api, work, db, config):
    api.put(f"/api/venues/{GYM}", json={"name": "<b>Gym</b>", "admin_emails": ["a@gym.test"],
                                        "livemode": False})
    evil = "<script>alert(1)</script>@example.com"
    for payload in (event("customer.created", customer("cus_Evil000000001", evil,
                                                       name="<img src=x>"), account=GYM),
                    event("customer.subscription.created",
                          {"id": "sub_Evil000000001", "object": "subscription",
                           "customer": "cus_Evil000000001", "status": "active"},
                          account=GYM)):
        post_event(client, payload)
    work()
    with db.session() as s:
        mismatch_id = s.scalar(select(Mismatch.id))
    body = page(open_link(client, config, mismatch_id, GYM))
    assert "<script>" not in body and "<img src=x>" not in body and "<b>Gym</b>" not in body
    assert "&lt;script&gt;" in body and "&lt;b&gt;Gym&lt;/b&gt;" in body


# --- guides, stylesheet, headers ----------------------------------------------------------------

def test_guides_are_public_and_complete(client):
    assert "Remediation guides" in page(client.get("/guides"))
    for case, fix in ((1, "Recreate the membership"), (2, "membership invite link"),
                      (3, "Invite the person to create an account")):
        response = client.get(f"/guides/case-{case}")
        body = page(response)
        assert response.status_code == 200
        for text in ("Before you start", "Steps", "Paste into the ticket", "Escalate when",
                     "Cancel the outside subscription", "Refund if charged", fix):
            assert text in body, (case, text)
    assert "charges the member immediately" in page(client.get("/guides/case-1"))
    response = client.get("/guides/case-4")
    assert response.status_code == 404 and "Not found" in page(response)


def test_one_local_stylesheet_no_scripts_and_strict_headers(client, scene, config):
    css = client.get("/static/console.css")
    assert css.status_code == 200 and css.mimetype == "text/css"
    cookie = client.get("/support/login").headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Lax" in cookie and "Secure" not in cookie
    from listener.app import create_app

    https = create_app(replace(config, public_base_url="https://mismatch.example"))
    assert https.config["SESSION_COOKIE_SECURE"] is True
    https.extensions["db"].dispose()
    sign_in(client)
    for url in ("/support", "/mismatches", f"/mismatches/{scene.case_1}", "/guides/case-2",
                "/support/login"):
        response = client.get(url)
        body = page(response)
        assert response.status_code == 200, url
        assert "<script" not in body
        assert body.count('rel="stylesheet"') == 1
        assert 'href="/static/console.css"' in body
        assert "Content-Security-Policy" in response.headers
        assert "script-src" not in response.headers["Content-Security-Policy"]
        assert response.headers["Referrer-Policy"] == "no-referrer"
        assert response.headers["Cache-Control"] == "no-store"


# --- attacks on sign-in ------------------------------------------------------------------------

def test_sign_in_next_holding_control_characters_stays_on_site(client):
    # A browser drops tabs and newlines from a Location: `/\t/evil.test` is `//evil.test`.
    for target in ("/\x00", "/\x7f/evil.test"):  # refused at the edge: a 400 page
        response = sign_in(client, next_=target)
        assert response.status_code == 400 and "Location" not in response.headers
    for target in ("/\t/evil.test", "/%09/evil.test", "/\n/evil.test", "/\r\nSet-Cookie: x=1",
                   "/ /evil.test", "https:/evil.test"):
        response = sign_in(client, next_=target)
        assert response.status_code == 303, target
        location = response.headers["Location"]
        assert location in ("/support", "/%09/evil.test"), (target, location)
        assert not location.startswith("//")
        client.post("/support/logout", data={"csrf_token": csrf_from(page(
            client.get("/support")))})


def test_failed_sign_ins_are_limited_before_the_password_is_checked(client, monkeypatch):
    import listener.console as console

    checked = []
    real = console.check_staff_password
    monkeypatch.setattr(console, "check_staff_password",
                        lambda *a: checked.append(1) or real(*a))
    statuses = [sign_in(client, password=f"guess {n}").status_code for n in range(8)]
    assert statuses == [401] * 5 + [429] * 3
    assert len(checked) == 5  # the refused ones never reached the password hash

    response = sign_in(client)  # even the right password waits for the window
    assert response.status_code == 429
    assert int(response.headers["Retry-After"]) > 0
    assert "Too many sign-in attempts. Try again in" in page(response)
    assert client.get("/support").status_code == 302
    # Another user name from elsewhere is not locked out by it.
    other = client.application.test_client()
    assert sign_in(other, user="bob", password="another one").status_code == 303


def test_a_signed_out_session_cookie_no_longer_signs_in(client):
    assert sign_in(client).status_code == 303
    with client.session_transaction() as session:
        captured = dict(session)
    client.post("/support/logout", data={"csrf_token": csrf_from(page(client.get("/support")))})
    assert client.get("/support").status_code == 302

    with client.session_transaction() as session:  # the old cookie, replayed
        session.update(captured)
    assert client.get("/support").status_code == 302


def test_sessions_end_when_the_users_password_hash_changes(client, app, monkeypatch):
    from werkzeug.security import generate_password_hash

    assert sign_in(client).status_code == 303
    assert client.get("/support").status_code == 200
    config = app.config["MISMATCH"]
    changed = {**config.support_users,
               STAFF_USER: generate_password_hash("a new one", "pbkdf2:sha256:1000")}
    app.config["MISMATCH"] = replace(config, support_users=changed)
    assert client.get("/support").status_code == 302
