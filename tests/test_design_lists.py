"""docs/design.md's route and command tables are the contract others read: held to the code
(the app's url_map, the `mismatch` CLI) so the two cannot drift apart again; and the CLI
stays apart from the web app."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import click
import pytest

ROOT = Path(__file__).resolve().parent.parent
DESIGN = ROOT / "docs" / "design.md"
PLACEHOLDER = re.compile(r"<[^>]*>")


def section(title: str) -> str:
    text = DESIGN.read_text()
    start = text.index(f"\n### {title}\n")
    end = text.index("\n### ", start + 1)
    return text[start:end]


def first_column(table: str) -> list[str]:
    """The backticked items of each table row's first cell."""
    items = []
    for line in table.splitlines():
        if line.startswith("| `"):
            items += re.findall(r"`([^`]+)`", line.split(" | ")[0])
    return items


def test_the_route_table_lists_every_route_and_nothing_else(app):
    documented = {PLACEHOLDER.sub("<>", item) for item in first_column(section("HTTP"))}
    served = set()
    for rule in app.url_map.iter_rules():
        for method in rule.methods - {"HEAD", "OPTIONS"}:
            served.add(f"{method} {PLACEHOLDER.sub('<>', rule.rule)}")
    assert sorted(served - documented) == [], "routes missing from docs/design.md"
    assert sorted(documented - served) == [], "docs/design.md lists routes that do not exist"


def cli_commands() -> set[str]:
    from listener.cli import main

    ctx = main.make_context("mismatch", [], resilient_parsing=True)
    found = set()
    for name in main.list_commands(ctx):
        command = main.get_command(ctx, name)
        if isinstance(command, click.Group):
            found |= {f"mismatch {name} {sub}" for sub in command.list_commands(ctx)}
        elif command is not None:
            found.add(f"mismatch {name}")
    return found


def test_the_command_table_lists_every_command_and_nothing_else(env):
    documented = set(first_column(section("Command line")))
    commands = cli_commands()
    assert sorted(commands - documented) == [], "commands missing from docs/design.md"
    assert sorted(documented - commands) == [], "docs/design.md lists commands that do not exist"


WEB_MODULES = ("listener.app", "listener.api", "listener.console", "listener.console_auth",
               "listener.health", "listener.metrics", "listener.outbox_page",
               "listener.webhooks", "listener.wsgi")


@pytest.mark.parametrize("args", [["--help"], ["sweep", "--help"], ["worker", "--help"]])
def test_commands_run_without_the_web_app(args):
    """Worker-side commands run from the configuration alone: asking the CLI for help (or
    for a worker) imports none of the web's blueprints."""
    probe = ("import sys\nfrom listener.cli import main\n"
             f"try:\n    main({args!r}, prog_name='mismatch')\n"
             "except SystemExit as exit:\n    assert exit.code == 0\n"
             "print(sorted(m for m in sys.modules if m.startswith('listener')))")
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                          cwd=ROOT, timeout=60)
    assert done.returncode == 0, done.stderr
    loaded = done.stdout.strip().splitlines()[-1]
    assert "Usage: mismatch" in done.stdout
    assert not [m for m in WEB_MODULES if f"'{m}'" in loaded], loaded
