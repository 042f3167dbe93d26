"""docs/design.md's route and command tables are the contract others read: held to the code
(the app's url_map, the `mismatch` CLI) so the two cannot drift apart again."""

from __future__ import annotations

import re
from pathlib import Path

import click

DESIGN = Path(__file__).resolve().parent.parent / "docs" / "design.md"
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
