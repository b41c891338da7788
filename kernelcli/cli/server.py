"""kernelcli server start | stop | status (kernelcli.server.service)."""

from __future__ import annotations

import click

from ..console import say
from ..errors import KernelcliError
from .common import CONTEXT

ALL_HELP = "Every server of yours (one runs per install, environment and context: cgroup, namespaces, groups)."


@click.group("server", context_settings=CONTEXT)
def server_group():
    """The resident server that makes each call fast (started by calls when none runs)."""


@server_group.command("start", context_settings=CONTEXT)
@click.option("--idle", type=click.FloatRange(min=1), metavar="SECONDS",
              help="Exit after this long without requests  [default: 600; env KERNELCLI_SERVER_IDLE].")
def server_start(idle):
    """Start the server now, unless one runs for this install."""
    from ..server import service

    info, started = service.ensure(idle)
    if started:
        say(f"server running: pid {info['pid']}, socket {info['socket']}")
    elif idle is not None and float(info.get("idle_exit_s", idle)) != idle:
        say(f"server already running: pid {info['pid']}, socket {info['socket']}; it keeps its idle exit of "
            f"{info['idle_exit_s']} s (--idle applies to a server it starts: `kernelcli server stop` first)")
    else:
        say(f"server already running: pid {info['pid']}, socket {info['socket']}")


@server_group.command("stop", context_settings=CONTEXT)
@click.option("--all", "every", is_flag=True, help=ALL_HELP)
def server_stop(every):
    """Stop the server (requests in progress finish first)."""
    from ..server import service

    if every:
        pids = service.stop_all()
        say("no server running" if not pids else "stopped " + ", ".join(f"pid {p}" for p in pids))
        return
    pid = service.stop()
    say("no server running" if pid is None else f"stopped the server (pid {pid})")


@server_group.command("status", context_settings=CONTEXT)
@click.option("--all", "every", is_flag=True, help=ALL_HELP)
def server_status(every):
    """Print pid, socket, uptime, requests served and memory (exit 1 if none runs)."""
    from ..server import service

    infos = service.statuses() if every else [i for i in [service.status()] if i]
    if not infos:
        raise KernelcliError("no server running" + ("" if every else " for this install and environment"))
    for n, info in enumerate(infos):
        if n:
            click.echo()
        for key, value in info.items():
            click.echo(f"{key}: {value}")


COMMANDS = [server_group]
