"""The `streamq` commands of retention (STUB: to be built). cli.py calls add_commands(commands, command)."""

from __future__ import annotations

from typing import Any


def add_commands(commands: Any, command: Any) -> None:
    """Add this module's commands to the `streamq` parser: `command(commands, name, help, epilog, run)`."""
