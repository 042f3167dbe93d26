"""No laptop defaults in production: with MISMATCH_ENV=production an implicit SQLite file, the
embedded Redis, the local outbox and a short SECRET_KEY each stop the service in one line
naming the setting; `mismatch stripe check` reports every one; the outbox is for staff."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from config import ConfigError, load_config
from tests.pages_support import SUPPORT_USERS, sign_in

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
SETTINGS = ("DATABASE_URL", "REDIS_URL", "SMTP_URL", "SECRET_KEY")
GOOD = {"MISMATCH_ENV": "production", "DATABASE_URL": "postgresql://db.internal/mismatch",
        "REDIS_URL": "redis://redis.internal:6379/0", "SMTP_URL": "smtp://mail.internal:587",
        "SECRET_KEY": "k" * 32, "PUBLIC_BASE_URL": "https://mismatch.example"}


def bare_env(tmp_path: Path, **values: str) -> dict[str, str]:
    """A production environment with nothing of the test suite's in it."""
    return {"PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", "HOME": str(tmp_path),
            "MISMATCH_ENV": "production", **values}


@pytest.mark.parametrize("missing", SETTINGS)
def test_each_laptop_default_is_refused_naming_its_setting(tmp_path, missing):
    env = {k: v for k, v in GOOD.items() if k != missing}
    with pytest.raises(ConfigError) as caught:
        load_config({**env, "INSTANCE_PATH": str(tmp_path)})
    message = str(caught.value)
    assert message.startswith(f"{missing}: required in production") and "\n" not in message
    assert not (tmp_path / "secret_key").exists()  # nothing generated on its behalf


def test_a_short_secret_key_is_refused_and_a_complete_setup_starts(tmp_path):
    with pytest.raises(ConfigError, match="SECRET_KEY: .*at least 32 characters .*1 given"):
        load_config({**GOOD, "SECRET_KEY": "x"})
    config = load_config({**GOOD, "INSTANCE_PATH": str(tmp_path)})
    assert config.production and config.smtp is not None and config.redis_url
    # Outside production the laptop defaults stay the defaults.
    assert load_config({"INSTANCE_PATH": str(tmp_path)}).redis_url is None


@pytest.mark.parametrize("command", [["db", "upgrade"], ["worker", "--burst"],
                                     ["venues", "import", "x.csv"], ["serve"]])
def test_commands_stop_in_one_line_naming_every_setting(tmp_path, command):
    result = subprocess.run([str(BIN / "mismatch"), *command], cwd=tmp_path,
                            env=bare_env(tmp_path), capture_output=True, text=True, timeout=60)
    assert result.returncode == 1, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: DATABASE_URL: required in production")
    assert all(f"{name}: required in production" in lines[0] for name in SETTINGS)
    assert list(tmp_path.iterdir()) == []  # no database, no Redis, no instance folder


def test_the_procfile_web_line_stops_in_one_line(tmp_path):
    web = next(line.removeprefix("web:").strip()
               for line in (ROOT / "Procfile").read_text().splitlines() if line.startswith("web:"))
    result = subprocess.run(["bash", "-c", f"exec {web}"], cwd=ROOT,
                            env=bare_env(tmp_path, PORT="0", SECRET_KEY="short"),
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    refused = [line for line in result.stderr.splitlines() if line.startswith("mismatch:")]
    assert len(refused) == 1 and "SECRET_KEY: required in production, at least 32" in refused[0]
    assert "Traceback" not in result.stderr


def test_stripe_check_reports_each_laptop_default(tmp_path):
    result = subprocess.run([str(BIN / "mismatch"), "stripe", "check"], cwd=tmp_path,
                            env=bare_env(tmp_path, SECRET_KEY="tiny"), capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 1
    for code in ("database_url", "redis_url", "smtp_url", "secret_key"):
        assert f"PROBLEM [production_{code}]" in result.stdout, result.stdout
    assert "4 given" in result.stdout and "fix: Set SMTP_URL" in result.stdout


def test_the_outbox_is_for_signed_in_staff_even_without_an_api_token(env, db, redis,
                                                                     monkeypatch):
    from listener.app import create_app

    monkeypatch.delenv("API_TOKEN")
    monkeypatch.setenv("SUPPORT_USERS", SUPPORT_USERS)
    client = create_app(load_config(), TESTING=True).test_client()
    response = client.get("/outbox")
    assert response.status_code == 302 and "/support/login" in response.headers["Location"]
    assert client.get("/outbox", headers={"Authorization": "Bearer guess"}).status_code == 401
    assert sign_in(client).status_code == 303
    assert client.get("/outbox").status_code == 200
