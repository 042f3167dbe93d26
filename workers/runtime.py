"""Per-process configuration and database for jobs (RQ imports jobs by name, no Flask app)."""

from __future__ import annotations

import functools

from config import Config, load_config
from db import Database


@functools.cache
def runtime() -> tuple[Config, Database]:
    from workers.jobs import queue_deliveries  # jobs imports this module

    config = load_config()
    return config, Database(config.database_url,
                            on_deliveries=functools.partial(queue_deliveries, config))


def reset_runtime() -> None:
    """Forget the cached config and engine (tests change the environment between runs)."""
    if runtime.cache_info().currsize:
        runtime()[1].dispose()
    runtime.cache_clear()
