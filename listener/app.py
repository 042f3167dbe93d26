"""The web app: Stripe webhook intake, the JSON API, the support pages, health and metrics,
assembled from the blueprints."""

from __future__ import annotations

import functools
import logging
from pathlib import Path
from typing import Any

from flask import Flask, jsonify
from flask.typing import ResponseReturnValue
from werkzeug.exceptions import HTTPException
from werkzeug.middleware.proxy_fix import ProxyFix
from werkzeug.routing import IntegerConverter, Map

import templates
import workers
from config import Config, load_config
from db import ROW_ID_MAX, Database
from db.errors import scrub_logs
from listener import api, console, health, metrics, outbox_page, webhooks
from listener.edge import refuse_control_characters
from listener.sign_in_pool import SignInGate
from listener.throttle import Throttle


def create_app(config: Config | None = None, **overrides: Any) -> Flask:
    """Application factory; `config` defaults to the environment."""
    config = config or load_config()
    app = Flask(__name__, template_folder=str(_templates_dir()), static_folder=None)
    app.config.update(SECRET_KEY=config.secret_key, MISMATCH=config)
    app.config.update(overrides)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    logging.getLogger("stripe").setLevel(logging.WARNING)  # it logs every request at INFO
    scrub_logs()  # no bound values or recipients in a logged traceback

    app.url_map.converters["int"] = RowId  # before any blueprint adds its routes
    app.before_request(refuse_control_characters)  # before every blueprint's own checks
    # Ignored [method-assign]: wrapping wsgi_app in middleware is Flask's documented way.
    app.wsgi_app = SignInGate(app.wsgi_app)  # type: ignore[method-assign]
    if config.proxy_hops:  # the client's address, as the load balancer saw it
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=config.proxy_hops,  # type: ignore[method-assign]  # as above
                                x_proto=config.proxy_hops)
    app.extensions["db"] = Database(config.database_url, on_deliveries=functools.partial(
        workers.queue_deliveries, config))
    workers.sync_destinations(app.extensions["db"], config)
    app.extensions["throttle"] = Throttle(config)

    metrics.init_app(app)
    app.register_blueprint(health.bp)
    app.register_blueprint(webhooks.bp)
    app.register_blueprint(api.bp)
    app.register_blueprint(outbox_page.bp)
    console.init_app(app)

    @app.errorhandler(400)
    def bad_request(e: HTTPException) -> ResponseReturnValue:
        return jsonify(error=e.description or "bad request"), 400

    @app.errorhandler(404)
    def not_found(_e: Exception) -> ResponseReturnValue:
        return jsonify(error="not found"), 404

    @app.errorhandler(413)
    def too_large(_e: Exception) -> ResponseReturnValue:
        return jsonify(error="request body too large"), 413

    @app.errorhandler(405)
    def method_not_allowed(_e: Exception) -> ResponseReturnValue:
        return jsonify(error="method not allowed"), 405

    return app


class RowId(IntegerConverter):
    """`<int:…>` in our URLs is a row id: one beyond what the column holds names nothing
    (404) instead of reaching the database as an out-of-range error (a 500)."""

    def __init__(self, map: Map, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("min", 1)
        kwargs.setdefault("max", ROW_ID_MAX)
        super().__init__(map, *args, **kwargs)


def _templates_dir() -> Path:
    return Path(templates.__file__).parent
