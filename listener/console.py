"""The support console: dashboard, mismatch pages with their remediation steps, and the three
remediation guides. Server-rendered HTML, one stylesheet, no JavaScript.

Access (listener.console_auth): support staff sign in (SUPPORT_USERS); a venue admin opens
one mismatch through the signed link in their notice (notifications.links). Guides hold no
data and are public. Every form is CSRF-protected; pages are never cached and never send a
Referer, so a Stripe Dashboard click does not carry our URLs elsewhere.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import stripe
from flask import (
    Blueprint,
    Flask,
    Response,
    abort,
    flash,
    make_response,
    redirect,
    render_template,
    request,
    send_from_directory,
    url_for,
)
from flask.typing import ResponseReturnValue
from sqlalchemy.orm import Session

from db import (
    Mismatch,
    MismatchStatus,
    Resolution,
    Venue,
)
from db.records import MAX_OFFSET, NOTE_MAX, unstorable
from listener import console_queries as queries
from listener.console_auth import (
    CSRF_FIELD,
    PageSessions,
    Viewer,
    add_grant,
    check_staff_password,
    csrf_ok,
    csrf_token,
    init_csrf,
    safe_next,
    sign_in,
    sign_out,
    staff_user,
    viewer_for,
)
from listener.context import current_config, current_db, current_throttle
from listener.edge import ControlCharacter
from notifications.links import LinkExpired, LinkInvalid, describe_age, read_link
from notifications.view import (
    CASE_SHORT,
    CASE_TITLES,
    dashboard_url,
    day,
    guide_view,
    mismatch_view,
    money,
)
from workers import (
    ACTION,
    CANCEL,
    EVENT,
    MISMATCH_RECHECK,
    REFUND,
    ActionRefused,
    ActionStatus,
    SetupFinding,
    StripeApi,
    StripeUnavailable,
    actions_of,
    diagnose,
    last_setup_check,
    queue_depth,
    read_pasted,
    refusal,
    request_action,
    request_customer_fix,
    same_email_customers,
    try_enqueue,
)

log = logging.getLogger(__name__)

bp = Blueprint("console", __name__)

STATIC_DIR = Path(__file__).resolve().parents[1] / "templates" / "pages" / "static"
TIMELINE_LIMIT = 50
RECENT_LIMIT = 15
VENUES_SHOWN = 50  # the venues with the most open mismatches; the list page has the rest
LIST_LIMIT = 100
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; style-src 'self'; img-src 'self' data:; "
                               "form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
}


def init_app(app: Flask) -> None:
    """Register the console and make its session cookie strict enough for a support tool."""
    config = app.config["MISMATCH"]
    # Flask's defaults are None/False; a value set through create_app(**overrides) wins.
    if not app.config.get("SESSION_COOKIE_SAMESITE"):
        app.config["SESSION_COOKIE_SAMESITE"] = "Lax"
    app.config["SESSION_COOKIE_HTTPONLY"] = True
    app.session_interface = PageSessions()
    init_csrf(app)
    app.after_request(security_headers)
    if config.public_base_url.startswith("https://"):
        app.config["SESSION_COOKIE_SECURE"] = True
    app.register_blueprint(bp)


# --- plumbing --------------------------------------------------------------------------------

def security_headers(response: Response) -> Response:
    """On every response of the app (pages, JSON, errors, webhooks)."""
    for key, value in SECURITY_HEADERS.items():
        response.headers.setdefault(key, value)
    return response


@bp.after_request
def headers(response: Response) -> Response:
    if request.endpoint != "console.stylesheet":
        response.headers["Cache-Control"] = "no-store"
    return response


@bp.before_request
def who() -> None:
    """Answer "who is signed in" before a view opens its own database session (SQLite takes
    its write lock per session: a second one inside the first would wait on itself)."""
    staff_user(current_config(), current_db())


@bp.before_request
def check_csrf() -> ResponseReturnValue | None:
    if request.method == "POST" and not csrf_ok():
        log.warning("console: form rejected (missing or wrong CSRF token) on %s",
                    request.endpoint)
        return _message(400, "This form has expired",
                        "The page you sent it from was open too long, or the form did not "
                        "come from this site. Go back, reload the page and try again.")
    return None


@bp.context_processor
def helpers() -> dict[str, Any]:
    return {"csrf_token": csrf_token, "csrf_field": CSRF_FIELD, "when": when, "ago": ago,
            "case_title": CASE_TITLES, "case_short": CASE_SHORT, "money": money, "day": day,
            "staff": staff_user(current_config(), current_db())}


@bp.errorhandler(404)
def not_found(_exc: Exception) -> ResponseReturnValue:
    return _message(404, "Not found", "There is nothing at this address.")


@bp.errorhandler(ControlCharacter)
def control_character(exc: ControlCharacter) -> ResponseReturnValue:
    return _message(400, "This can't be read", f"The request was refused: {exc.description}. "
                    "Go back and enter it again without it.")


def _message(status: int, title: str, text: str, *, sign_in_link: bool = False
             ) -> tuple[str, int]:
    """A plain page that explains what went wrong and what to do instead."""
    return render_template("pages/message.html", title=title, text=text, status=status,
                           sign_in_link=sign_in_link,
                           next=request.path if request.method == "GET" else None), status


def _aware(value: datetime | None) -> datetime | None:
    if value is None:
        return None
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


def when(value: datetime | int | None) -> str:
    """`22 Nov 2025, 07:25 UTC` from a datetime (naive = UTC) or a unix timestamp."""
    if value is None:
        return "—"
    if isinstance(value, int):
        value = datetime.fromtimestamp(value, UTC)
    aware = _aware(value)
    assert aware is not None
    return aware.astimezone(UTC).strftime("%d %b %Y, %H:%M UTC")


def ago(value: datetime | None) -> str:
    """`4 min ago`: how stale something is, at a glance."""
    aware = _aware(value)
    if aware is None:
        return "—"
    return duration(time.time() - aware.timestamp()) + " ago"


def duration(seconds: float) -> str:
    seconds = max(0, int(seconds))
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min"
    if seconds < 86400:
        return f"{seconds // 3600} h {seconds % 3600 // 60} min"
    return f"{seconds // 86400} d {seconds % 86400 // 3600} h"


def _require_staff() -> str | ResponseReturnValue:
    name = staff_user(current_config(), current_db())
    if name is None:
        back = request.full_path.rstrip("?") if request.method == "GET" else None
        return redirect(url_for("console.login", next=back))
    return name


def staff_required(view: Callable[..., Any]) -> Callable[..., Any]:
    """A page for signed-in support staff only (anyone else is sent to sign in); the view
    gets the staff member's name as `who`."""

    @functools.wraps(view)
    def for_staff(**kwargs: Any) -> Any:
        who = _require_staff()
        if not isinstance(who, str):
            return who
        return view(who=who, **kwargs)

    return for_staff


# --- sign-in ---------------------------------------------------------------------------------

@bp.get("/")
def index() -> ResponseReturnValue:
    return redirect(url_for("console.dashboard"))


@bp.get("/static/console.css")
def stylesheet() -> ResponseReturnValue:
    return send_from_directory(STATIC_DIR, "console.css", mimetype="text/css", max_age=3600)


@bp.route("/support/login", methods=["GET", "POST"])
def login() -> ResponseReturnValue:
    config = current_config()
    target = safe_next(request.values.get("next")) or url_for("console.dashboard")
    error = None
    status = 200
    headers = {}
    if request.method == "POST":
        name = request.form.get("username", "").strip()[:200]
        password = request.form.get("password", "")
        client = request.remote_addr or "-"
        throttle = current_throttle()
        over = throttle.sign_in_attempt(client, name)  # counted before the hash
        if over is not None:  # refused before the password is hashed
            log.warning("console: sign-in refused, too many attempts")
            error, status = over.message, 429
            headers["Retry-After"] = str(over.retry_after)
        elif check_staff_password(config, name, password):
            throttle.sign_in_succeeded(name)
            sign_in(config, name)
            log.info("console: support sign-in")
            return redirect(target, 303)
        else:
            log.warning("console: failed support sign-in")
            error, status = "Wrong user name or password.", 401
    return render_template("pages/login.html", error=error, next=target,
                           configured=bool(config.support_users)), status, headers


@bp.post("/support/logout")
def logout() -> ResponseReturnValue:
    sign_out(current_db())
    flash("You are signed out.", "ok")
    return redirect(url_for("console.login"), 303)


# --- dashboard -------------------------------------------------------------------------------

def _queue_depth() -> int | None:
    try:
        return queue_depth(current_config())
    except Exception as exc:  # noqa: BLE001 - the page must render while Redis is down
        log.warning("console: queue depth unavailable (%s)", type(exc).__name__)
        return None


def _setup_check() -> tuple[int, list[SetupFinding]] | None:
    """The doctor's last findings (workers run it hourly; `mismatch stripe check` now)."""
    try:
        return last_setup_check(current_config())
    except Exception as exc:  # noqa: BLE001 - the page must render while Redis is down
        log.warning("console: stripe check unavailable (%s)", type(exc).__name__)
        return None


@bp.get("/support")
@staff_required
def dashboard(who: str) -> ResponseReturnValue:
    with current_db().session() as s:
        d = queries.dashboard(s, RECENT_LIMIT)
    oldest = _aware(d.oldest)
    return render_template(
        "pages/dashboard.html", by_venue=d.by_venue[:VENUES_SHOWN],
        venue_total=len(d.by_venue), newest_open=d.newest_open,
        billed_to_accounts=d.billed_to_accounts,
        open_total=sum(r.total for r in d.by_venue), accepted=d.accepted, rejected=d.rejected,
        failed=d.failed, failed_total=d.failed_total, queue_depth=_queue_depth(),
        oldest_age=duration(time.time() - oldest.timestamp()) if oldest else None,
        pending=d.pending, unrouted=d.unrouted, unknown_customers=d.unknown_customers,
        drift=d.drift, setup_check=_setup_check(), generated_at=datetime.now(UTC),
        platform_account=current_config().stripe_platform_account)


@bp.post("/support/events/<event_id>/replay")
@staff_required
def replay(event_id: str, who: str) -> ResponseReturnValue:
    """Give a failed event another go: back to `received`, then queue it."""
    with current_db().session() as s:
        reset = queries.reset_failed_event(s, event_id)
    if not reset:
        flash(f"{event_id} is not a failed event (already replayed?): nothing queued.", "warn")
        return redirect(url_for("console.dashboard") + "#failed", 303)
    if try_enqueue(current_config(), EVENT, event_id, again=True):
        flash(f"{event_id} queued for replay.", "ok")
    else:  # the row is `received`: the sweeper queues it
        flash(f"{event_id} is marked for replay but the queue is unreachable; the sweeper will "
              "queue it.", "warn")
    log.info("console: replay of %s requested", event_id)
    return redirect(url_for("console.dashboard") + "#failed", 303)


# --- mismatch list (staff) -------------------------------------------------------------------

@bp.get("/mismatches")
@staff_required
def mismatches(who: str) -> ResponseReturnValue:
    status = request.args.get("status", "open")
    case = request.args.get("case", "")
    account = request.args.get("account", "").strip()
    if len(account) > 64 or unstorable(account):
        account = ""  # no account id looks like that: no filter rather than a 500
    try:
        offset = min(max(0, int(request.args.get("offset", 0))), MAX_OFFSET)
    except ValueError:
        offset = 0
    with current_db().session() as s:
        rows = queries.mismatch_list(s, status=status, case=case, account=account,
                                     offset=offset, limit=LIST_LIMIT + 1)
    return render_template("pages/mismatches.html", rows=rows[:LIST_LIMIT],
                           more=len(rows) > LIST_LIMIT, offset=offset, limit=LIST_LIMIT,
                           status=status, case=case, account=account)


# --- one mismatch ----------------------------------------------------------------------------

def _denied(text: str = "This page opens from the link in a notice email, or after support "
                        "staff sign in.") -> tuple[str, int]:
    return _message(403, "You can't open this page", text, sign_in_link=True)


def _load_for(s: Session, mismatch_id: int, *, lock: bool = False
              ) -> tuple[Mismatch, Viewer]:
    """The mismatch and who may see it; a refusal (or 404) ends the request here."""
    m = s.get(Mismatch, mismatch_id, with_for_update=lock)
    viewer = viewer_for(current_config(), current_db(), m)
    if viewer is None:
        abort(make_response(*_denied()))
    if m is None:
        abort(404)
    return m, viewer


def _open_link(mismatch_id: int, token: str) -> ResponseReturnValue:
    """Exchange a notice link for a session grant, then show the page without the token
    (so a copied URL or a screenshot never carries the permission)."""
    config = current_config()
    try:
        grant = read_link(config, token)
    except LinkExpired as exc:
        log.info("console: expired link for mismatch %s", mismatch_id)
        return _message(403, "This link has expired",
                        f"Links in notice emails work for {describe_age(exc.max_age)}. Open "
                        "the link in a newer notice email, or ask support to send you a "
                        "fresh one.", sign_in_link=True)
    except LinkInvalid as exc:
        log.warning("console: invalid link for mismatch %s", mismatch_id)
        return _message(403, "This link is not valid",
                        f"{exc} Copy the whole link from the notice email, or ask support.",
                        sign_in_link=True)
    with current_db().session() as s:
        m = s.get(Mismatch, mismatch_id)
        if grant.mismatch_id != mismatch_id or m is None or m.account_id != grant.account_id:
            log.warning("console: link for mismatch %s used on mismatch %s",
                        grant.mismatch_id, mismatch_id)
            return _denied("This link is for a different page. Open the link exactly as it "
                           "is in the notice email.")
    add_grant(mismatch_id, grant.account_id, grant.expires_at(config.mismatch_link_max_age))
    return redirect(url_for("console.mismatch", mismatch_id=mismatch_id), 303)


@bp.get("/mismatches/<int:mismatch_id>")
def mismatch(mismatch_id: int) -> ResponseReturnValue:
    token = request.args.get("t")
    if token:
        return _open_link(mismatch_id, token)
    with current_db().session() as s:
        m, viewer = _load_for(s, mismatch_id)
        venue = s.get(Venue, m.venue_id) if m.venue_id else None
        view = mismatch_view(current_config(), s, m, venue)
        events = queries.timeline(s, m, current_config().stripe_platform_account,
                                  TIMELINE_LIMIT)
        actions = actions_of(s, m.id)
        refused = ({kind: refusal(current_config(), s, m, kind) for kind in (CANCEL, REFUND)}
                   if viewer.is_staff else {})
        return render_template("pages/mismatch.html", m=m, v=view, events=events,
                               viewer=viewer, timeline_limit=TIMELINE_LIMIT, actions=actions,
                               refused=refused, CANCEL=CANCEL, REFUND=REFUND,
                               platform_account=current_config().stripe_platform_account,
                               dashboard_url=dashboard_url)


ACTION_TITLES = {CANCEL: "Cancel subscription in Stripe", REFUND: "Refund what it charged"}


def _staff_action(kind: str) -> str:
    """The signed-in staff user an action page needs (venue admins' links read and resolve
    only); for anyone else the request ends here."""
    if kind not in ACTION_TITLES:
        abort(404)
    who = _require_staff()
    if not isinstance(who, str):
        abort(make_response(who))
    return who


@bp.get("/mismatches/<int:mismatch_id>/act/<kind>")
def confirm_action(mismatch_id: int, kind: str) -> ResponseReturnValue:
    """The confirmation step: exactly what will happen, before anything does."""
    _staff_action(kind)
    with current_db().session() as s:
        m, viewer = _load_for(s, mismatch_id)
        view = mismatch_view(current_config(), s, m)
        why = refusal(current_config(), s, m, kind)
        return render_template("pages/confirm_action.html", m=m, v=view, viewer=viewer,
                               kind=kind, title=ACTION_TITLES[kind], refused=why,
                               due=[c for c in view.charges if c.refundable],
                               CANCEL=CANCEL, REFUND=REFUND)


@bp.post("/mismatches/<int:mismatch_id>/act/<kind>")
def act(mismatch_id: int, kind: str) -> ResponseReturnValue:
    who = _staff_action(kind)
    queued: list[int] = []
    with current_db().session() as s:
        m, _viewer = _load_for(s, mismatch_id, lock=True)
        if request.form.get("confirm") != m.subscription_id:
            flash("Type the subscription ID to confirm; nothing was done.", "warn")
            return redirect(url_for("console.confirm_action", mismatch_id=mismatch_id,
                                    kind=kind), 303)
        try:
            actions = request_action(current_config(), s, m, kind, f"{who} (support)")
        except ActionRefused as exc:
            flash(f"Not done: {exc}.", "warn")
            return redirect(url_for("console.mismatch", mismatch_id=mismatch_id), 303)
        queued = [a.id for a in actions if a.status == ActionStatus.QUEUED]
    for action_id in queued:
        try_enqueue(current_config(), ACTION, action_id)
    log.info("console: %s requested on mismatch %s (%d queued)", kind, mismatch_id,
             len(queued))
    flash(f"{ACTION_TITLES[kind]}: {'queued' if queued else 'already asked for'}. The "
          "outcome appears under “Done in Stripe” below.", "ok")
    return redirect(url_for("console.mismatch", mismatch_id=mismatch_id), 303)


@bp.post("/mismatches/<int:mismatch_id>/resolve")
def resolve(mismatch_id: int) -> ResponseReturnValue:
    note = " ".join(request.form.get("note", "").split())
    with current_db().session() as s:
        m, viewer = _load_for(s, mismatch_id, lock=True)
        if not note:
            flash("Add a note saying what you did (for example: canceled and refunded, invite "
                  "sent), then mark it resolved.", "warn")
        elif len(note) > NOTE_MAX:
            flash(f"The note is too long (at most {NOTE_MAX} characters).", "warn")
        elif unstorable(note):
            flash("The note holds a character that cannot be stored (a NUL or a broken "
                  "character); remove it and try again.", "warn")
        elif m.resolve(Resolution.MANUAL, f"{viewer.actor()}: {note}"):
            log.info("console: mismatch %s resolved manually (%s)", m.id,
                     "support" if viewer.is_staff else "venue link")
            flash("Marked as resolved.", "ok")
        else:
            flash("This mismatch was already resolved; nothing changed.", "warn")
    return redirect(url_for("console.mismatch", mismatch_id=mismatch_id), 303)


@bp.post("/mismatches/<int:mismatch_id>/recheck")
def recheck(mismatch_id: int) -> ResponseReturnValue:
    with current_db().session() as s:
        m, viewer = _load_for(s, mismatch_id)
        is_open = m.status == MismatchStatus.OPEN
    if not is_open:
        flash("This mismatch is resolved; there is nothing to re-check.", "warn")
    elif try_enqueue(current_config(), MISMATCH_RECHECK, mismatch_id):
        flash("Re-check queued. Reload this page in a few seconds to see the result.", "ok")
    else:
        flash("The re-check could not be queued right now; try again in a minute.", "warn")
    return redirect(url_for("console.mismatch", mismatch_id=mismatch_id), 303)


# --- guides ----------------------------------------------------------------------------------

@bp.get("/guides")
def guides() -> ResponseReturnValue:
    return render_template("pages/guides.html")


@bp.get("/guides/case-<int:case>")
def guide(case: int) -> ResponseReturnValue:
    if case not in (1, 2, 3):
        abort(404)
    return render_template("pages/guide.html", v=guide_view(case))


# --- "No such customer" (the SOP as a page) --------------------------------------------------

@bp.route("/support/diagnose", methods=["GET", "POST"])
@staff_required
def diagnose_page(who: str) -> ResponseReturnValue:
    """Paste a cus_…, Stripe's error or its request_log_url: where that customer lives, who
    links it, and the SOP's fix as a confirmed action. Stripe is read here with no database
    transaction open; the fix itself runs in a worker."""
    config = current_config()
    text = request.form.get("pasted", "") if request.method == "POST" else (
        request.args.get("customer", ""))
    pasted = read_pasted(text) if text else None
    account = (request.values.get("account") or (pasted.account_id if pasted else None)
               or None)
    with current_db().session() as s:
        venues = queries.venue_names(s)
        fixes = (queries.customer_fixes(s, pasted.customer_id)
                 if pasted and pasted.customer_id else [])
    result, error, others = None, None, []
    if pasted is not None and pasted.customer_id is None:
        error = "No customer ID (cus_…) in what you pasted."
    elif pasted is not None and pasted.customer_id:
        api = StripeApi(config)
        try:
            result = diagnose(config, current_db(), api, pasted.customer_id, account)
            target = account or (result.members[0][0] if result.members else None)
            email = result.location.email or _member_email(pasted.customer_id, target)
            if target and email:
                try:
                    others = [c for c in same_email_customers(api, target, email)
                              if c != pasted.customer_id]
                except (StripeUnavailable, stripe.StripeError) as exc:
                    others = [f"(could not list: {type(exc).__name__})"]
        except StripeUnavailable as exc:
            error = str(exc)
        except stripe.StripeError as exc:
            error = f"Stripe refused: {type(exc).__name__}"
    return render_template("pages/diagnose.html", pasted=pasted, text=text, result=result,
                           error=error, others=others, venues=venues, account=account,
                           fixes=fixes)


def _member_email(customer_id: str, account_id: str | None) -> str | None:
    if not account_id:
        return None
    with current_db().session() as s:
        return queries.member_email(s, customer_id, account_id)


@bp.post("/support/diagnose/fix")
@staff_required
def diagnose_fix(who: str) -> ResponseReturnValue:
    customer_id = request.form.get("customer", "")
    account_id = request.form.get("account", "")
    # Back to the same diagnosis, with what was pasted (the note quotes its error and URL).
    # (On one line: an address holds no newlines, and what is pasted reads the same without.)
    pasted = " ".join(request.form.get("pasted", "")[:4000].split())
    back = url_for("console.diagnose_page", account=account_id, customer=pasted or customer_id)
    if request.form.get("confirm") != customer_id or not customer_id.startswith("cus_"):
        flash("Type the old customer ID to confirm; nothing was done.", "warn")
        return redirect(back, 303)
    if not current_config().stripe_secret_key:
        flash("Not done: STRIPE_SECRET_KEY is not set.", "warn")
        return redirect(back, 303)
    with current_db().session() as s:
        if not queries.venue_exists(s, account_id):
            flash(f"Not done: no venue {account_id}.", "warn")
            return redirect(back, 303)
        action = request_customer_fix(s, account_id, customer_id, f"{who} (support)")
        action_id, queued = action.id, action.status == ActionStatus.QUEUED
    if queued:
        try_enqueue(current_config(), ACTION, action_id)
    log.info("console: customer fix requested for %s in %s", customer_id, account_id)
    flash("Queued: a worker creates the customer and relinks the member; the result shows "
          "below." if queued else "Already asked for; the result shows below.", "ok")
    return redirect(back, 303)
