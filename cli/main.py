"""Entry point of the ``canidae`` command: builds the typer app and maps errors to exit codes."""

import typer

app = typer.Typer(name="canidae", no_args_is_help=True)


def run() -> None:
    app()
