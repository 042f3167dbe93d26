"""GET /outbox: the local outbox (mail written under instance/outbox/ while SMTP_URL is
unset), so a developer can read what the service would have sent.

Exists only while SMTP_URL is unset (404 otherwise: real mail is in real mailboxes; and
production refuses to start without SMTP_URL). The messages hold member emails and the
notices' signed links, which open the venues' mismatch pages, so it is for support staff
only: signed in to the console, or (scripts) with the API token as a Bearer header or as the
password of a Basic-auth prompt. Anyone else is sent to the sign-in page.
"""

from __future__ import annotations

import base64
import hmac
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from email import policy
from email.message import EmailMessage
from email.parser import BytesParser
from pathlib import Path
from typing import cast

from flask import (
    Blueprint,
    Response,
    abort,
    redirect,
    render_template,
    request,
    send_file,
    url_for,
)
from flask.typing import ResponseReturnValue

from listener.console_auth import staff_user
from listener.context import current_config, current_db
from notifications.send import outbox_dir

bp = Blueprint("outbox", __name__, url_prefix="/outbox")

NAME = re.compile(r"^\d{8}-[a-z0-9_]+$")
LIST_LIMIT = 200
# The email's HTML is ours and escaped, but it is shown sandboxed anyway: no scripts, no
# remote loads, only inline styles.
HTML_CSP = "default-src 'none'; style-src 'unsafe-inline'; img-src data:; sandbox"


def _authorized(token: str) -> bool:
    header = request.headers.get("Authorization", "")
    scheme, _, value = header.partition(" ")
    given = ""
    if scheme.lower() == "bearer":
        given = value.strip()
    elif scheme.lower() == "basic":
        try:
            given = base64.b64decode(value.strip()).decode().partition(":")[2]
        except (ValueError, UnicodeDecodeError):
            given = ""
    return bool(given) and hmac.compare_digest(given.encode(), token.encode())


@bp.before_request
def guard() -> ResponseReturnValue | None:
    config = current_config()
    if config.smtp is not None:
        abort(404)
    if staff_user(config, current_db()):
        return None
    if "Authorization" in request.headers:
        if config.api_token and _authorized(config.api_token):
            return None
        return Response("Wrong credentials: sign in to the console, or give the API token "
                        "as the password.", 401)
    return redirect(url_for("console.login", next=request.path))


@dataclass
class Entry:
    name: str
    subject: str
    to: str
    date: str
    kind: str
    case: str | None


def _folder() -> Path:
    return outbox_dir(current_config())


def _read(path: Path) -> EmailMessage:
    with path.open("rb") as fh:
        return cast(EmailMessage, BytesParser(policy=policy.default).parse(fh))


def _path(name: str) -> Path:
    if not NAME.match(name):
        abort(404)
    path = _folder() / f"{name}.eml"
    if not path.is_file():
        abort(404)
    return path


@bp.get("")
def index() -> ResponseReturnValue:
    folder = _folder()
    files = sorted(folder.glob("*.eml"), reverse=True) if folder.is_dir() else []
    entries = []
    for path in files[:LIST_LIMIT]:
        msg = _read(path)
        modified = datetime.fromtimestamp(path.stat().st_mtime, UTC)
        entries.append(Entry(name=path.stem, subject=str(msg["Subject"] or ""),
                             to=str(msg["To"] or ""),
                             date=modified.strftime("%Y-%m-%d %H:%M:%S UTC"),
                             kind=path.stem.split("-", 1)[-1],
                             case=msg["X-Mismatch-Case"]))
    return render_template("pages/outbox.html", entries=entries, total=len(files),
                           limit=LIST_LIMIT, folder=str(folder))


@bp.get("/<name>")
def message(name: str) -> ResponseReturnValue:
    msg = _read(_path(name))
    text = msg.get_body(preferencelist=("plain",))
    headers = [(k, str(v)) for k, v in msg.items()]
    return render_template("pages/outbox_message.html", name=name, headers=headers,
                           subject=str(msg["Subject"] or ""),
                           text=text.get_content() if text is not None else "",
                           has_html=msg.get_body(preferencelist=("html",)) is not None)


@bp.get("/<name>/html")
def message_html(name: str) -> ResponseReturnValue:
    part = _read(_path(name)).get_body(preferencelist=("html",))
    if part is None:
        abort(404)
    return Response(part.get_content(), mimetype="text/html", headers={
        "Content-Security-Policy": HTML_CSP, "X-Content-Type-Options": "nosniff"})


@bp.get("/<name>/raw")
def message_raw(name: str) -> ResponseReturnValue:
    return send_file(_path(name), mimetype="message/rfc822", as_attachment=True,
                     download_name=f"{name}.eml")
