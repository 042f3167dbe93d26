"""What every request to the API and the pages passes before a view sees it: no control
characters in the path, a query parameter or a form field, and none in a JSON body's strings
but tabs and newlines. A NUL reaches PostgreSQL as an error (a 500), a CR/LF in a stored
`actor` or a logged path forges lines. Stripe's deliveries are checked where they arrive
(listener/webhooks.py), against their signature first."""

from __future__ import annotations

import re
from typing import Any

from flask import request
from werkzeug.exceptions import BadRequest

# Nothing of C0 or DEL: ids, refs, query parameters, one-line form fields.
CONTROL = re.compile(r"[\x00-\x1f\x7f]")
# Text that may run over lines (a note, a pasted error): tabs and newlines allowed. Lone
# surrogates (from a JSON \ud800 escape) cannot be stored either.
CONTROL_IN_TEXT = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f\ud800-\udfff]")
FORM_TYPES = ("application/x-www-form-urlencoded", "multipart/form-data")


class ControlCharacter(BadRequest):
    """A 400 that says where the control character was (never the value itself)."""


def refuse_control_characters() -> None:
    """Flask `before_request` for the whole app, webhooks excepted."""
    if request.path.startswith("/webhooks/"):
        return
    if CONTROL.search(request.path):
        named = [k for k, v in (request.view_args or {}).items()
                 if isinstance(v, str) and CONTROL.search(v)]
        raise ControlCharacter(f"{named[0] if named else 'the address'} holds a control "
                               f"character")
    for key, value in request.args.items(multi=True):
        if CONTROL.search(key) or CONTROL.search(value):
            raise ControlCharacter(f"query parameter {_name(key)} holds a control character")
    if request.method in ("POST", "PUT", "PATCH") and request.mimetype in FORM_TYPES:
        for key, value in request.form.items(multi=True):
            if CONTROL.search(key) or CONTROL_IN_TEXT.search(value):
                raise ControlCharacter(f"form field {_name(key)} holds a control character")


def bad_json_string(data: Any, where: str = "body") -> str | None:
    """Where in a parsed JSON document a key or string holds a control character (tabs and
    newlines allowed in values) or a lone surrogate; None when nowhere."""
    stack = [(data, where)]
    while stack:
        value, at = stack.pop()
        if isinstance(value, str):
            if CONTROL_IN_TEXT.search(value):
                return at
        elif isinstance(value, dict):
            for key, item in value.items():
                if CONTROL.search(key) or CONTROL_IN_TEXT.search(key):
                    return f"a key of {at}"
                stack.append((item, f"'{key}'" if at == where else f"{at}.{key}"))
        elif isinstance(value, list):
            stack.extend((item, f"{at}[{n}]") for n, item in enumerate(value))
    return None


def _name(key: str) -> str:
    """A field's name as it may be echoed: escaped, and short."""
    return ascii(key[:40])
