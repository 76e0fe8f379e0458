"""Every option of every `fitml` command says what it is for in `--help`."""

from __future__ import annotations

import subprocess
import sys

import click
import typer.main

from ml_pipeline.cli import app


def _commands(command: click.Command, prefix: str = "fitml") -> list[tuple[str, click.Command]]:
    found = [(prefix, command)]
    if isinstance(command, click.Group):
        for name, sub in command.commands.items():
            found += _commands(sub, f"{prefix} {name}")
    return found


def test_every_option_has_help() -> None:
    missing = [
        f"{name} {param.opts[0]}"
        for name, command in _commands(typer.main.get_command(app))
        for param in command.params
        if isinstance(param, click.Option) and not param.help and param.opts[0] != "--help"
    ]
    assert not missing, f"options without help: {missing}"


def test_help_of_json_and_port_as_printed() -> None:
    for args, words in (
        (["evaluate"], "metrics to this JSON file"),
        (["serve"], "TCP port to listen on"),
    ):
        done = subprocess.run(
            [sys.executable, "-m", "ml_pipeline.cli", *args, "--help"],
            capture_output=True,
            text=True,
            timeout=60,
            env={"COLUMNS": "200", "PATH": ""},
        )
        assert done.returncode == 0 and words in done.stdout, done.stdout
