"""What an on-call engineer does with outbound destinations: `mismatch outbound …` (list,
test, replay, disable, enable, new-secret; each bad argument one line and a non-zero exit),
what /metrics shows of them, and `prune` keeping 30 days of messages and any still owed."""

from __future__ import annotations

import base64
from datetime import timedelta

import pytest
from sqlalchemy import func, select, update
from standardwebhooks.webhooks import Webhook

from db import Delivery, DeliveryStatus, Message, utcnow
from tests.support import GYM, customer, event, post_event, run_cli, subscription

SUB, CUS = "sub_1OutboundOps0001", "cus_1OutboundOps0001"


def open_mismatch(client, work) -> None:  # type: ignore[no-untyped-def]
    for payload in (event("customer.created", customer(CUS, "walkin@example.com"), account=GYM),
                    event("customer.subscription.created", subscription(SUB, CUS),
                          account=GYM)):
        assert post_event(client, payload).status_code == 200
    work()


def test_list_test_disable_enable_replay(booking, venues, client, db, work, deliver
                                        ):  # type: ignore[no-untyped-def]
    open_mismatch(client, work)
    booking.answers = [500] * 4  # the first attempt and its three retries: failed for good
    deliver()
    listed = run_cli("outbound", "list")
    assert listed.exit_code == 0
    assert "booking" in listed.output and "failed      1" in listed.output, listed.output

    tested = run_cli("outbound", "test", "booking")
    assert tested.exit_code == 0 and "test message msg_" in tested.output
    deliver()
    assert [r["type"] for r in booking.received] == ["destination.test"]

    assert run_cli("outbound", "disable", "booking").exit_code == 0
    again = run_cli("outbound", "replay", "booking", "--failed-since", "2020-01-01")
    assert again.exit_code == 0 and "1 message(s) owed to booking again" in again.output
    assert "it is disabled" in again.output
    deliver()
    assert [r["type"] for r in booking.received] == ["destination.test"]  # off: nothing sent

    assert run_cli("outbound", "enable", "booking").exit_code == 0
    deliver()
    assert [r["type"] for r in booking.received] == ["destination.test", "mismatch.opened"]
    with db.session() as s:
        statuses = set(s.scalars(select(Delivery.status)))
    assert statuses == {DeliveryStatus.DELIVERED}


@pytest.mark.parametrize("args, says", [
    (["replay", "booking"], "exactly one of --message or --failed-since"),
    (["replay", "booking", "--failed-since", "yesterday"], "not a date or time"),
    (["replay", "booking", "--failed-since", "2999-01-01"], "in the future"),
    (["replay", "nobody", "--message", "msg_1"], "no destination 'nobody'"),
    (["replay", "booking", "--message", "msg_unknown"], "no message msg_unknown"),
    (["test", "Not A Name"], "a destination's name is"),
])
def test_bad_arguments_are_one_line_and_fail(booking, app, args, says
                                            ):  # type: ignore[no-untyped-def]
    result = run_cli("outbound", *args)
    assert result.exit_code != 0
    assert says in result.output
    assert "Traceback" not in result.output
    assert len([line for line in result.output.splitlines() if line.startswith("Error")]) == 1


def test_new_secret_is_a_standard_webhooks_secret():  # type: ignore[no-untyped-def]
    result = run_cli("outbound", "new-secret")
    secret = result.output.strip()
    assert result.exit_code == 0 and secret.startswith("whsec_")
    assert len(base64.b64decode(secret.removeprefix("whsec_"))) == 32
    Webhook(secret)  # the receiving library takes it


def test_metrics_show_deliveries_per_destination(booking, venues, client, work, deliver
                                                ):  # type: ignore[no-untyped-def]
    open_mismatch(client, work)
    deliver()
    text = client.get("/metrics").get_data(as_text=True)
    assert 'mismatch_outbound_deliveries{destination="booking",status="delivered"} 1.0' in text
    assert 'mismatch_outbound_response_seconds_count{destination="booking"} 1.0' in text
    assert 'mismatch_outbound_response_seconds_bucket{destination="booking",le="+Inf"} 1.0' \
        in text


def test_prune_keeps_thirty_days_and_what_is_still_owed(booking, venues, client, db, work
                                                        ):  # type: ignore[no-untyped-def]
    open_mismatch(client, work)  # one message, owed to booking (not delivered yet)
    with db.session() as s:
        s.execute(update(Message).values(created_at=utcnow() - timedelta(days=45)))
    assert run_cli("prune").exit_code == 0
    with db.session() as s:
        assert s.scalar(select(func.count()).select_from(Message)) == 1  # still owed

        s.execute(update(Delivery).values(status=DeliveryStatus.DELIVERED))
        s.execute(update(Message).values(created_at=utcnow() - timedelta(days=29)))
    assert run_cli("prune", "--older-than-days", "7").exit_code == 0
    with db.session() as s:
        assert s.scalar(select(func.count()).select_from(Message)) == 1  # under 30 days

        s.execute(update(Message).values(created_at=utcnow() - timedelta(days=31)))
    result = run_cli("prune")
    assert result.exit_code == 0 and "1 outbound messages" in result.output
    with db.session() as s:
        assert s.scalar(select(func.count()).select_from(Message)) == 0
        assert s.scalar(select(func.count()).select_from(Delivery)) == 0
