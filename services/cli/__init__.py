"""The `agentflux` command line.

The top layer, with the developer tooling it drives (`services.stack`, `services.demo`):
it may import every layer below, and nothing below may import it (`[tool.importlinter]` in
pyproject.toml). Larger subcommands live in modules beside this one (`trace.py`)."""

from __future__ import annotations

from typing import Annotated

import typer
from pydantic import ValidationError

from services import stack
from services.cli.ask import ask
from services.cli.certs import certs_app
from services.cli.tenants import tenants_app
from services.cli.tools import tools as list_tools
from services.cli.trace import trace as show_trace
from services.runtime import lifecycle
from services.runtime.config import Settings
from services.stack import ServiceStatus

app = typer.Typer(
    name="agentflux",
    help="agentflux: an event-driven runtime for AI agents.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
stack_app = typer.Typer(
    help="The local stack: Kafka, RabbitMQ, Redis and Memcached on loopback.",
    no_args_is_help=True,
)
app.add_typer(stack_app, name="stack")
app.add_typer(certs_app, name="certs")
app.add_typer(tenants_app, name="tenants")


def _settings() -> Settings:
    try:
        return Settings()
    except ValidationError as exc:
        lines = [
            f"  AGENTFLUX_{'_'.join(str(p) for p in e['loc']).upper() or '...'}: {e['msg']}"
            for e in exc.errors()
        ]
        typer.secho("invalid configuration:\n" + "\n".join(lines), fg="red", err=True)
        raise typer.Exit(2) from None


def _say(line: str) -> None:
    typer.echo(line)


def _fail(exc: Exception) -> typer.Exit:
    typer.secho(f"error: {exc}", fg="red", err=True)
    return typer.Exit(1)


@stack_app.command("up")
def stack_up() -> None:
    """Install what is missing, start all four services and create topics and queues."""
    settings = _settings()
    try:
        stack.up(settings, say=_say)
    except stack.StackError as exc:
        typer.echo("run `agentflux stack status` to see what is running", err=True)
        raise _fail(exc) from None
    _print_status(stack.status(settings))


@stack_app.command("down")
def stack_down(
    wipe: Annotated[bool, typer.Option("--wipe", help="Also delete data and logs.")] = False,
) -> None:
    """Stop the services `stack up` started (data is kept unless --wipe)."""
    stack.down(_settings(), wipe=wipe, say=_say)


@stack_app.command("status")
def stack_status() -> None:
    """Show each service, its ports and whether it answers. Exit 1 unless all are healthy."""
    statuses = stack.status(_settings())
    _print_status(statuses)
    if not all(s.healthy for s in statuses):
        raise typer.Exit(1)


def _print_status(statuses: list[ServiceStatus]) -> None:
    typer.echo(f"{'SERVICE':<10} {'STATE':<8} {'PID':>7}  {'ADDRESS':<44} DETAIL")
    for s in statuses:
        ports = ",".join(f"{p}({role})" for role, p in s.ports.items())
        state = "healthy" if s.healthy else ("down" if s.pid is None else "failing")
        color = "green" if s.healthy else "red"
        pid = str(s.pid) if s.pid else "-"
        line = f"{s.name:<10} {state:<8} {pid:>7}  {s.host + ':' + ports:<44} "
        typer.echo(line + typer.style(s.detail, fg=color))


@app.command("config")
def config() -> None:
    """Print every setting: its environment variable, value in force and meaning."""
    settings = _settings()
    for name, field in Settings.model_fields.items():
        value = getattr(settings, name)
        if isinstance(value, list):
            value = ",".join(str(v) for v in value)
        typer.echo(f"AGENTFLUX_{name.upper()}={value}")
        typer.echo(typer.style(f"    {field.description}", dim=True))


@app.command("demo")
def demo() -> None:
    """Start the mesh, ask questions that use every tool, then print one run's trace."""
    from services.demo import run_demo

    settings = _settings()
    try:
        correlation_id = lifecycle.run(run_demo(settings, say=_say), settings.event_loop)
    except lifecycle.EventLoopError as exc:  # a setting to fix, not a stack to start
        raise _fail(exc) from None
    except Exception as exc:
        typer.echo("is the stack up? `agentflux stack up` (or `make demo`) starts it", err=True)
        raise _fail(exc) from None
    if settings.span_store_dir is not None:
        typer.echo(f"\n$ agentflux trace {correlation_id}")
        show_trace(correlation_id, store=settings.span_store_dir, as_json=False)


SERVICE_NAMES = ("gateway", "planner", "worker", "composer", "indexer")


@app.command("serve")
def serve(
    services: Annotated[
        list[str] | None,
        typer.Argument(
            help=f"Services to run in this process: {', '.join(SERVICE_NAMES)} (default: all).",
            show_default=False,
        ),
    ] = None,
    log_level: Annotated[str, typer.Option("--log-level", help="DEBUG, INFO, WARNING.")] = "INFO",
    json_logs: Annotated[bool, typer.Option("--json-logs", help="Log JSON lines.")] = False,
    parent: Annotated[
        int | None,
        typer.Option(
            "--parent",
            min=1,
            help="Stop (SIGTERM: drain) when this process, the one starting serve from its "
            "main thread, dies, even by SIGKILL: for scripts that run serve as a child. "
            "Linux.",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Run services of the mesh against the stack until Ctrl-C or SIGTERM."""
    if parent is not None:
        # First: a parent killed while the services start stops them too.
        try:
            lifecycle.stop_with_parent(parent)
        except lifecycle.ParentError as exc:
            raise _fail(exc) from None
    names = list(dict.fromkeys(services or SERVICE_NAMES))
    unknown = [n for n in names if n not in SERVICE_NAMES]
    if unknown:
        typer.secho(
            f"unknown service {', '.join(unknown)}; choose from {', '.join(SERVICE_NAMES)}",
            fg="red",
            err=True,
        )
        raise typer.Exit(2)
    settings = _settings()
    # Imported here: the services pull in every client library, which `stack up` and
    # `config` do not need.
    from interceptors import configure_logging
    from services.cli.serve import serve_forever
    from services.runtime.tls import TLSSettingsError

    configure_logging("agentflux", log_level.upper(), json=json_logs)
    try:
        code = lifecycle.run(serve_forever(settings, names, say=_say), settings.event_loop)
    except KeyboardInterrupt:
        code = 130
    except (TLSSettingsError, lifecycle.EventLoopError) as exc:  # a setting to fix
        raise _fail(exc) from None
    except Exception as exc:
        typer.echo(
            "could not start; is the stack up? `agentflux stack up` starts it "
            "(`agentflux stack status` shows it)",
            err=True,
        )
        raise _fail(exc) from None
    raise typer.Exit(code)


app.command("ask")(ask)

# Bound here as `show_trace`, not `trace`: the package attribute `trace` must stay the
# submodule, or `import services.cli.trace` and patches would get the function instead.
app.command("trace")(show_trace)
app.command("tools")(list_tools)


def main() -> None:
    """Entry point of the `agentflux` script."""
    app()
