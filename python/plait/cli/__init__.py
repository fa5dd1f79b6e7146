"""The `plait` command line (typer, rich): `plait --help` lists its commands.

Needs the `http` extra (`pip install 'plait[http]'`).
"""

from plait.cli.app import app, main
from plait.cli.exit_codes import ExitCode

__all__ = ["ExitCode", "app", "main"]
