"""``usagi serve``: run the node (the peer listener and the delivery loop) until stopped."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import sys
import time
from typing import TYPE_CHECKING

import click

from ...node.home import write_private
from ...node.terminal import LogFormatter, printable
from .common import home_of, run, with_node

if TYPE_CHECKING:
    from ...node.node import Node

__all__ = ["serve"]


@click.command()
@click.option("--port", type=int, default=None, help="Override the configured port.")
@click.option("--quiet", is_flag=True, help="Print only warnings, not each delivery.")
@click.pass_context
def serve(ctx: click.Context, port: int | None, quiet: bool) -> None:
    """Run the node: the peer API and the delivery of the outbox, until Ctrl-C.

    Prints a line for each document received or delivered (--quiet: warnings only).

    Example: usagi --home ./kanto serve
    """
    activity = logging.getLogger("usagi.activity")
    if not quiet:
        # Its own handler: a timestamped line a person reads in a terminal or a journal.
        handler = logging.StreamHandler(sys.stderr)
        stamp = LogFormatter("%(asctime)s %(message)s", "%Y-%m-%dT%H:%M:%SZ")
        stamp.converter = time.gmtime  # UTC, like every time the node writes
        handler.setFormatter(stamp)
        activity.addHandler(handler)
        activity.propagate = False
        activity.setLevel(min(activity.getEffectiveLevel(), logging.INFO))

    from ...node.operations import SERVE_STATE
    from ...peer.service import Service
    from ..api.server import LocalServer

    async def serving(node: Node) -> None:
        service = Service(node, port=port)
        # Ctrl-C and SIGTERM stop the node from here on, also while it starts: a
        # signal then ends the start and the node stops cleanly (installed later,
        # a signal arriving just before could be lost and the node run on).
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, service.stop.set)
        await service.start()
        local = LocalServer(node, peer_url=service.url, peer_port=service.port)
        try:
            local.tokens.cli_secret()  # the token this home's commands show the local API
            await local.start()
        except BaseException:
            await service.close()
            raise
        # Where 'usagi send' and others find this process to tell it to deliver now.
        state = home_of(ctx).path / SERVE_STATE
        write_private(state, json.dumps({"pid": os.getpid(), "url": service.url,
                                         "local_url": local.url,
                                         "local_socket": local.endpoints.local_socket}))
        click.echo(f"{printable(node.config.name)} serving on {service.url} as {node.did}",
                   err=True)
        click.echo(f"local API on {printable(local.url or local.endpoints.local_socket)}",
                   err=True)
        try:
            await service.run_forever()
        finally:
            await local.close()
            await service.close()
            state.unlink(missing_ok=True)

    run(with_node(ctx, serving))
