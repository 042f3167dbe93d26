"""The README's receiver example is code, not prose: this runs that very block as a real HTTP
server on loopback, points BOOKING_WEBHOOK_URL at it, and lets the real outbound workers
deliver to it — a new mismatch is shown, a replayed message (same webhook-id) is not shown
twice, a stale revision is dropped, a forged signature is refused, and a resolution is shown."""

from __future__ import annotations

import base64
import json
import re
import threading
from pathlib import Path
from typing import Any

import pytest
import urllib3
from sqlalchemy import select
from werkzeug.serving import make_server

from db import Delivery, DeliveryStatus, utcnow
from tests.support import GYM, customer, event, post_event, run_cli, subscription
from workers.outbound.destinations import BOOKING
from workers.outbound.post import headers

README = Path(__file__).resolve().parent.parent / "README.md"
SECRET = "whsec_" + base64.b64encode(b"the-readme-receiver-secret-32by!").decode()
SUB, CUS = "sub_1ReadmeReceiver01", "cus_1ReadmeReceiver01"


def example_source() -> str:
    text = README.read_text()
    found = re.search(r"<!-- receiver example -->\n```python\n(.*?)\n```", text, re.S)
    assert found, "README.md lost its receiver example"
    return found.group(1)


@pytest.fixture
def example(env, monkeypatch):  # type: ignore[no-untyped-def]
    """The example, served; `shown` collects what it put on a member page."""
    monkeypatch.setenv("MISMATCH_WEBHOOK_SECRET", SECRET)
    namespace: dict[str, Any] = {"__name__": "receiver_example"}
    exec(compile(example_source(), "README.md receiver example", "exec"), namespace)
    shown: list[dict] = []
    namespace["show_on_member_page"] = shown.append
    server = make_server("127.0.0.1", 0, namespace["app"], threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{server.server_port}/hooks/mismatch"
    monkeypatch.setenv("BOOKING_WEBHOOK_URL", url)
    monkeypatch.setenv("BOOKING_WEBHOOK_SECRET", SECRET)
    namespace["shown"], namespace["url"] = shown, url
    try:
        yield namespace
    finally:
        server.shutdown()
        thread.join(5)


def test_the_readme_receiver_verifies_dedupes_and_drops_stale(
        example, venues, client, api, db, work, deliver):  # type: ignore[no-untyped-def]
    shown = example["shown"]
    for payload in (event("customer.created", customer(CUS, "walkin@example.com"), account=GYM),
                    event("customer.subscription.created", subscription(SUB, CUS),
                          account=GYM)):
        assert post_event(client, payload).status_code == 200
    work()
    deliver()
    [opened] = shown
    assert opened["subscription_id"] == SUB and opened["status"] == "open"

    # The same message again (as a retry after a lost answer would be): answered 2xx, not
    # shown twice.
    [feed_item] = api.get("/api/messages").json["data"]
    replayed = run_cli("outbound", "replay", BOOKING, "--message", feed_item["id"])
    assert replayed.exit_code == 0, replayed.output
    deliver()
    assert len(shown) == 1
    with db.session() as s:
        [delivery] = s.scalars(select(Delivery)).all()
        assert delivery.status == DeliveryStatus.DELIVERED and delivery.last_status_code == 204

    # A stale revision under a new webhook-id (delivery order is not guaranteed): dropped.
    http = urllib3.PoolManager()
    body = feed_item | {"data": opened | {"revision": 0}}
    del body["id"]
    raw = json.dumps(body).encode()
    sent = http.request("POST", example["url"], body=raw,
                        headers=headers([SECRET], "msg_stale0001", utcnow(), raw))
    assert sent.status == 204 and len(shown) == 1

    # Signed with another secret: refused, nothing shown.
    other = "whsec_" + base64.b64encode(b"somebody-else-entirely-32-bytes!").decode()
    forged = http.request("POST", example["url"], body=raw,
                          headers=headers([other], "msg_forged0001", utcnow(), raw))
    assert forged.status == 400 and len(shown) == 1

    assert post_event(client, event("customer.subscription.deleted",
                                    subscription(SUB, CUS, status="canceled"),
                                    account=GYM)).status_code == 200
    work()
    deliver()
    assert [m["status"] for m in shown] == ["open", "resolved"]
    assert shown[-1]["revision"] > opened["revision"]
