"""`agentflux trace`: a request's spans as a waterfall, read from the local span store."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path
from typing import Annotated

import typer
from pydantic import ValidationError

from interceptors._context import check_id
from interceptors._errors import ContextValueError
from services.cli.waterfall import render, traces_in
from services.runtime.config import Settings

__all__ = ["trace"]


def _default_store() -> Path:
    try:
        return Settings().stack_dir / "traces"
    except ValidationError as exc:
        typer.secho(f"invalid configuration (see `agentflux config`): {exc}", fg="red", err=True)
        raise typer.Exit(2) from None


def _fail(message: str, code: int) -> typer.Exit:
    typer.secho(message, fg="red", err=True)
    return typer.Exit(code)


def trace(
    ident: Annotated[str, typer.Argument(help="correlation id or trace id", show_default=False)],
    store: Annotated[
        Path | None,
        typer.Option(
            "--store",
            help="Folder of spans-*.jsonl files (default: traces/ in the stack dir).",
            show_default=False,
        ),
    ] = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print the matched spans as JSON lines.")
    ] = False,
) -> None:
    """Print a trace as a waterfall: each hop's timing, queue wait and errors."""
    # A correlation id shows every trace it spans (a hop that started a new trace, a batch
    # consumer linked to it); a trace id shows that trace and the traces linked to it.
    ident = ident.strip()
    try:
        check_id("ident", ident)  # a trace id (32 hex) is a well-formed id too
    except ContextValueError as exc:
        raise _fail(
            f"{ident[:80]!r} is neither a trace id (32 hex digits) nor a correlation id "
            f"({exc.description}); copy one from a log line or from `agentflux demo`",
            2,
        ) from None
    folder = store if store is not None else _default_store()
    hint = (
        "spans are written by services running with the local span store; "
        "give them a second to flush"
    )
    if not folder.is_dir():
        raise _fail(f"no span store at {folder}; {hint}, or pass --store DIR", 1)
    traces = traces_in(folder, ident)
    if not traces:
        raise _fail(f"no spans for {ident} in {folder}; {hint}", 1)
    if as_json:
        for spans in traces.values():
            for span in spans:
                typer.echo(json.dumps(span, default=str))
        return
    tty = sys.stdout.isatty()
    width = min(max(shutil.get_terminal_size((100, 24)).columns, 80), 160) if tty else 100
    if len(traces) > 1:
        typer.echo(f"{ident}: {len(traces)} traces (same correlation id, or linked)\n")
    typer.echo("\n\n".join(render(spans, width=width, color=tty) for spans in traces.values()))
