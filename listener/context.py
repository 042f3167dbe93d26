"""What a request handler reads from the app it runs in: the configuration, the database and
the rate limits (create_app in listener/app.py puts them there)."""

from __future__ import annotations

from flask import current_app

from config import Config
from db import Database
from listener.throttle import Throttle


def current_config() -> Config:
    return current_app.config["MISMATCH"]


def current_db() -> Database:
    return current_app.extensions["db"]


def current_throttle() -> Throttle:
    """The web tier's rate limits (listener/throttle.py)."""
    return current_app.extensions["throttle"]
