"""The command line: a thin Typer layer over the library (commands.py); ``main`` is the entry point."""

from mura_cli.cli.commands import app, main

__all__ = ["app", "main"]
