"""`agentflux certs dev`: a local CA and the certificates to try TLS and mutual TLS.

For development only; what it writes is described in `_devca`, which is imported only
when the command runs (the `cryptography` package is not needed by other commands)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from pydantic import ValidationError

from services.runtime.config import Settings

__all__ = ["certs_app"]

certs_app = typer.Typer(
    help="Certificates for trying TLS on the gateway (development only).",
    no_args_is_help=True,
)


@certs_app.command("dev")
def dev(
    folder: Annotated[
        Path | None,
        typer.Option("--dir", help="Where to write them (default: <stack_dir>/certs)."),
    ] = None,
    hosts: Annotated[
        list[str] | None,
        typer.Option("--host", help="Another name or IP of the gateway (repeatable)."),
    ] = None,
    force: Annotated[bool, typer.Option("--force", help="Replace certificates there.")] = False,
) -> None:
    """Make a local CA, a gateway certificate and a client certificate (development only)."""
    if folder is None:
        try:
            folder = Settings().stack_dir / "certs"
        except ValidationError as exc:
            typer.secho(f"invalid configuration (see `agentflux config`): {exc}", err=True)
            raise typer.Exit(2) from None
    from services.cli._devca import make_dev_certs

    try:
        made = make_dev_certs(folder, hosts or [], force=force)
    except (OSError, ValueError) as exc:  # CertsExistError is an OSError
        typer.secho(f"error: {exc}", fg="red", err=True)
        raise typer.Exit(1) from None
    typer.secho(
        "For development only: a throwaway CA whose key is already gone; "
        "never use these files in production.",
        fg="yellow",
        err=True,
    )
    # Comments and exports only: `eval "$(agentflux certs dev)"` works.
    typer.echo(f"# wrote {', '.join(p.name for p in made.files())} to {made.folder}")
    typer.echo("\n".join(made.exports()))
