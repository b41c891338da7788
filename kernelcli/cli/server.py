"""kernelcli server start | stop | status (kernelcli.service)."""

from __future__ import annotations

import click

from ..console import say
from ..errors import KernelcliError
from .common import CONTEXT


@click.group("server", context_settings=CONTEXT)
def server_group():
    """The resident server that makes each call fast (started by calls when none runs)."""


@server_group.command("start", context_settings=CONTEXT)
@click.option("--idle", type=click.FloatRange(min=1), metavar="SECONDS",
              help="Exit after this long without requests  [default: 600; env KERNELCLI_SERVER_IDLE].")
def server_start(idle):
    """Start the server now, unless one runs for this install."""
    from .. import service

    info = service.start(idle)
    say(f"server running: pid {info['pid']}, socket {info['socket']}")


@server_group.command("stop", context_settings=CONTEXT)
def server_stop():
    """Stop the server (requests in progress finish first)."""
    from .. import service

    pid = service.stop()
    say("no server running" if pid is None else f"stopped the server (pid {pid})")


@server_group.command("status", context_settings=CONTEXT)
def server_status():
    """Print pid, socket, uptime, requests served and memory (exit 1 if none runs)."""
    from .. import service

    info = service.status()
    if info is None:
        raise KernelcliError("no server running for this install and environment")
    for key, value in info.items():
        click.echo(f"{key}: {value}")


COMMANDS = [server_group]
