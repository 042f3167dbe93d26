"""Real stand-ins for Stripe's API on loopback: localstripe (stateful, platform only; the
demo's launcher) and small servers for what localstripe lacks (Connect, 429s, errors)."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from standins.localstripe import LocalStripe

__all__ = ["ConnectStripe", "LocalStripe", "RecordingStripe"]


# (status, body) or (status, body, extra response headers)
Responder = Callable[[str, dict[str, str]], tuple[Any, ...]]


class JsonHandler(BaseHTTPRequestHandler):
    """Answers in JSON, as Stripe's API does; quiet."""

    def answer(self, status: int, body: dict[str, Any],
               headers: dict[str, str] | None = None) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: Any) -> None:
        pass


class RecordingStripe:
    """A loopback HTTP server answering like Stripe's API from a responder function, and
    recording each request's path and headers."""

    def __init__(self, responder: Responder) -> None:
        self.requests: list[tuple[str, dict[str, str]]] = []
        owner = self

        class Handler(JsonHandler):
            def do_GET(self) -> None:  # noqa: N802
                headers = {k: v for k, v in self.headers.items()}
                owner.requests.append((self.path, headers))
                self.answer(*responder(self.path, headers))

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class ConnectStripe:
    """A stateful stand-in for the parts of Stripe's API that localstripe lacks: data kept per
    connected account (the Stripe-Account header), list pagination with `starting_after`,
    Stripe's error bodies (including "a similar object exists in live mode")."""

    def __init__(self) -> None:
        from urllib.parse import parse_qs, urlsplit

        self.customers: dict[str | None, dict[str, dict[str, Any]]] = {}
        self.subscriptions: dict[str | None, list[dict[str, Any]]] = {}
        self.other_mode: dict[str, str] = {}  # customer id -> "live"/"test"
        self.requests: list[tuple[str, str, str | None]] = []  # (method, path, account)
        self.created = 0
        # Writes: what was done (once per idempotency key, as Stripe does), and the answers
        # replayed for a key seen before.
        self.canceled: list[tuple[str | None, str]] = []  # (account, subscription id)
        self.refunds: list[dict[str, Any]] = []  # {"account", "charge"/"payment_intent", …}
        self.answers: dict[str, tuple[int, dict[str, Any]]] = {}  # idempotency key -> answer
        self.invoice_payments: dict[str, str] = {}  # invoice id -> payment intent id
        self.keys: list[str | None] = []  # the Idempotency-Key of every write, in order
        self.events: dict[str | None, list[tuple[dict[str, Any], bool]]] = {}  # (event, delivered)
        self.queries: list[tuple[str, str | None, dict[str, str]]] = []  # (path, account, query)
        self.answer_after = 0.0  # seconds a write waits, done, before it answers
        # The platform: its own account id, its connected accounts, its webhook endpoints,
        # and thin (v2) events by id, each naming its snapshot event.
        self.platform_account = "acct_platform"
        self.connected_accounts: list[str] = []
        self.webhook_endpoints: list[dict[str, Any]] = []
        self.thin_events: dict[str, dict[str, Any]] = {}
        owner = self

        class Handler(JsonHandler):

            def do_GET(self) -> None:  # noqa: N802
                parts = urlsplit(self.path)
                account = self.headers.get("Stripe-Account")
                owner.requests.append(("GET", parts.path, account))
                query = {k: v[0] for k, v in parse_qs(parts.query).items()}
                owner.queries.append((parts.path, account, query))
                if parts.path == "/v1/account":
                    self.answer(200, {"id": owner.platform_account, "object": "account"})
                elif parts.path == "/v1/accounts":
                    accounts = [{"id": a, "object": "account"} for a in owner.connected_accounts]
                    self.answer(200, owner.page(accounts, query, "/v1/accounts"))
                elif parts.path == "/v1/webhook_endpoints":
                    self.answer(200, owner.page(
                        [{k: v for k, v in e.items() if k != "secret"}
                         for e in owner.webhook_endpoints], query, "/v1/webhook_endpoints"))
                elif parts.path.startswith("/v1/events/"):
                    eid = parts.path.rsplit("/", 1)[-1]
                    found = [e for e, _ in owner.events.get(account, []) if e["id"] == eid]
                    if found:
                        self.answer(200, found[0])
                    else:
                        self.answer(404, {"error": {"type": "invalid_request_error",
                                                     "message": f"No such event: '{eid}'"}})
                elif parts.path.startswith("/v2/core/events/"):
                    eid = parts.path.rsplit("/", 1)[-1]
                    thin = owner.thin_events.get(eid)
                    if thin and thin.get("context") == self.headers.get("Stripe-Context"):
                        self.answer(200, thin)
                    else:
                        self.answer(404, {"error": {"type": "not_found",
                                                     "message": f"No such event: '{eid}'"}})
                elif parts.path == "/v1/events":
                    wanted = query.get("delivery_success")
                    data = [e for e, delivered in owner.events.get(account, [])
                            if wanted is None or str(delivered).lower() == wanted]
                    self.answer(200, {"object": "list", "data": data, "has_more": False,
                                      "url": "/v1/events"})
                elif parts.path == "/v1/invoice_payments":
                    invoice = query.get("invoice", "")
                    data = ([{"object": "invoice_payment", "id": f"inpay_{invoice}",
                              "invoice": invoice, "status": "paid",
                              "payment": {"type": "payment_intent",
                                          "payment_intent": owner.invoice_payments[invoice]}}]
                            if invoice in owner.invoice_payments else [])
                    self.answer(200, {"object": "list", "data": data, "has_more": False,
                                      "url": "/v1/invoice_payments"})
                elif parts.path == "/v1/subscriptions":
                    page = owner.page(owner.subscriptions.get(account, []), query)
                    if "data.customer" in [v for k, v in query.items() if k.startswith("expand")]:
                        store = owner.customers.get(account, {})
                        page["data"] = [{**s, "customer": store.get(s["customer"], s["customer"])}
                                        for s in page["data"]]
                    self.answer(200, page)
                elif parts.path == "/v1/customers":
                    email = query.get("email")
                    found = [c for c in owner.customers.get(account, {}).values()
                             if email is None or c.get("email") == email]
                    self.answer(200, {"object": "list", "data": found, "has_more": False,
                                      "url": "/v1/customers"})
                elif parts.path.startswith("/v1/customers/"):
                    cid = parts.path.rsplit("/", 1)[-1]
                    found = owner.customers.get(account, {}).get(cid)
                    if found:
                        self.answer(200, found)
                    else:
                        message = f"No such customer: '{cid}'"
                        if cid in owner.other_mode:
                            mode = owner.other_mode[cid]
                            other = "test" if mode == "live" else "live"
                            message += (f"; a similar object exists in {mode} mode, but a "
                                        f"{other} mode key was used to make this request.")
                        self.answer(404, {"error": {"type": "invalid_request_error",
                                                     "code": "resource_missing",
                                                     "message": message, "param": "id"}})
                else:
                    self.answer(404, {"error": {"type": "invalid_request_error",
                                                 "message": "Unrecognized request URL"}})

            def write(self, account: str | None, do) -> None:  # type: ignore[no-untyped-def]
                """Answer a write once per Idempotency-Key; the same key replays it."""
                key = self.headers.get("Idempotency-Key")
                owner.keys.append(key)
                if key and key in owner.answers:
                    status, body = owner.answers[key]
                else:
                    status, body = do()
                    if key:
                        owner.answers[key] = (status, body)
                    time.sleep(owner.answer_after)  # done in "Stripe", not yet answered
                self.answer(status, body, {"Request-Id": f"req_{len(owner.requests):06d}"})

            def do_DELETE(self) -> None:  # noqa: N802
                account = self.headers.get("Stripe-Account")
                owner.requests.append(("DELETE", self.path, account))
                length = int(self.headers.get("Content-Length") or 0)
                self.rfile.read(length)
                sid = self.path.split("?")[0].rsplit("/", 1)[-1]
                if self.path.startswith("/v1/webhook_endpoints/"):
                    def delete() -> tuple[int, dict[str, Any]]:
                        found = owner.endpoint(sid)
                        if found is None:
                            return 404, {"error": {"type": "invalid_request_error",
                                                   "message": f"No such webhook endpoint: '{sid}'"}}
                        owner.webhook_endpoints.remove(found)
                        return 200, {"id": sid, "object": "webhook_endpoint", "deleted": True}

                    self.write(account, delete)
                    return

                def cancel() -> tuple[int, dict[str, Any]]:
                    for sub in owner.subscriptions.get(account, []):
                        if sub["id"] == sid:
                            if sub["status"] == "canceled":
                                return 400, {"error": {
                                    "type": "invalid_request_error",
                                    "message": f"No such subscription: '{sid}'"}}
                            sub["status"] = "canceled"
                            owner.canceled.append((account, sid))
                            return 200, sub
                    return 404, {"error": {"type": "invalid_request_error",
                                           "message": f"No such subscription: '{sid}'"}}

                self.write(account, cancel)

            def do_POST(self) -> None:  # noqa: N802
                account = self.headers.get("Stripe-Account")
                owner.requests.append(("POST", self.path, account))
                length = int(self.headers.get("Content-Length") or 0)
                form = {k: v[0] for k, v in parse_qs(self.rfile.read(length).decode()).items()}
                if self.path == "/v1/refunds":
                    def refund() -> tuple[int, dict[str, Any]]:
                        made = {"id": f"re_{len(owner.refunds) + 1:06d}", "object": "refund",
                                "account": account, "status": "succeeded",
                                **{k: form[k] for k in ("charge", "payment_intent", "amount")
                                   if k in form}}
                        owner.refunds.append(made)
                        return 200, made

                    self.write(account, refund)
                elif self.path == "/v1/webhook_endpoints":
                    self.write(account, lambda: (200, owner.create_endpoint(form)))
                elif self.path.startswith("/v1/webhook_endpoints/"):
                    eid = self.path.rsplit("/", 1)[-1]

                    def update() -> tuple[int, dict[str, Any]]:
                        found = owner.endpoint(eid)
                        if found is None:
                            return 404, {"error": {"type": "invalid_request_error",
                                                   "message": f"No such webhook endpoint: '{eid}'"}}
                        owner.apply_form(found, form)
                        return 200, {k: v for k, v in found.items() if k != "secret"}

                    self.write(account, update)
                elif self.path == "/v1/customers":
                    owner.created += 1
                    customer = owner.add_customer(account, f"cus_New{owner.created:04d}",
                                                  form.get("email"), name=form.get("name"))
                    self.answer(200, customer)
                else:
                    self.answer(404, {"error": {"type": "invalid_request_error",
                                                 "message": "Unrecognized request URL"}})

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def endpoint(self, endpoint_id: str) -> dict[str, Any] | None:
        return next((e for e in self.webhook_endpoints if e["id"] == endpoint_id), None)

    @staticmethod
    def apply_form(endpoint: dict[str, Any], form: dict[str, str]) -> None:
        """Stripe's update: url, enabled_events, disabled, description, metadata."""
        events = [v for k, v in sorted(((k, v) for k, v in form.items()
                                        if k.startswith("enabled_events[")),
                                       key=lambda kv: int(kv[0][len("enabled_events["):-1]))]
        if events:
            endpoint["enabled_events"] = events
        for key in ("url", "description"):
            if key in form:
                endpoint[key] = form[key]
        if "disabled" in form:
            endpoint["status"] = "disabled" if form["disabled"] == "true" else "enabled"
        for key, value in form.items():
            if key.startswith("metadata["):
                endpoint["metadata"][key[len("metadata["):-1]] = value

    def create_endpoint(self, form: dict[str, str]) -> dict[str, Any]:
        """Stripe's create: `connect` and `api_version` are fixed from then on; the secret
        is in this answer only."""
        self.created += 1
        number = self.created
        made: dict[str, Any] = {
            "id": f"we_{number:06d}", "object": "webhook_endpoint", "url": "",
            "api_version": form.get("api_version"), "enabled_events": [],
            "application": "ca_standin" if form.get("connect") == "true" else None,
            "status": "enabled", "description": None, "metadata": {}, "livemode": False,
            "secret": f"whsec_standin{number:06d}",
        }
        self.apply_form(made, form)
        self.webhook_endpoints.append(made)
        return made

    def add_endpoint(self, url: str, events: list[str], *, connect: bool,
                     api_version: str | None = None, status: str = "enabled") -> dict[str, Any]:
        """An endpoint made some other way (the Dashboard)."""
        form = {"url": url, "connect": "true" if connect else "false",
                **{f"enabled_events[{i}]": e for i, e in enumerate(events)}}
        if api_version:
            form["api_version"] = api_version
        made = self.create_endpoint(form)
        made["status"] = status
        return made

    @staticmethod
    def page(items: list[dict[str, Any]], query: dict[str, str],
             url: str = "/v1/subscriptions") -> dict[str, Any]:
        limit = int(query.get("limit", 10))
        start = 0
        if "starting_after" in query:
            start = next(i for i, x in enumerate(items) if x["id"] == query["starting_after"]) + 1
        chunk = items[start:start + limit]
        return {"object": "list", "data": chunk, "has_more": start + limit < len(items),
                "url": url}

    def add_customer(self, account: str | None, cid: str, email: str | None,
                     livemode: bool = False, deleted: bool = False,
                     name: str | None = None) -> dict[str, Any]:
        customer = {"id": cid, "object": "customer", "email": email, "name": name,
                    "livemode": livemode}
        if deleted:
            customer = {"id": cid, "object": "customer", "deleted": True}
        self.customers.setdefault(account, {})[cid] = customer
        return customer

    def add_subscription(self, account: str | None, sid: str, cid: str,
                         status: str = "active", livemode: bool = False) -> None:
        self.subscriptions.setdefault(account, []).append(
            {"id": sid, "object": "subscription", "customer": cid, "status": status,
             "livemode": livemode, "created": int(time.time())})

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
