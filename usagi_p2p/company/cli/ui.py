"""``usagi ui``: a one-time link that signs a browser in to the web UI (docs/ui.md).

As Jupyter does: the command prints a URL with a one-time code (and opens it
on a desktop); the node serving this home exchanges it for a session cookie.
Whoever can run ``usagi`` on the home can sign in, as the company or, with
``--user``, as one of its users (their name goes on what they send, their
plugin subset decides what they see).
"""

from __future__ import annotations

import os
import sys
import webbrowser

import click

from ...node.terminal import printable
from .common import emit, home_of, ride

__all__ = ["ui_command"]


def _desktop() -> bool:
    """Whether a browser can open here (a graphical session), not over SSH or in CI."""
    if os.environ.get("CI") or os.environ.get("SSH_CONNECTION"):
        return False
    return sys.platform in ("darwin", "win32") or bool(
        os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))


@click.command("ui")
@click.option("--user", default=None, help="Sign in as this user of the node ('usagi user list').")
@click.option("--open/--no-open", "open_", default=None,
              help="Open the link in a browser (default: on a desktop).")
@click.pass_context
def ui_command(ctx: click.Context, user: str | None, open_: bool | None) -> None:
    """Print a one-time sign-in link to the web UI of the node serving this home.

    The link works once, within 15 minutes; the browser that opens it stays
    signed in for 12 hours. 'usagi serve' must be running.

    Example: usagi --home ./kanto ui

    Example: usagi ui --user suzuki --no-open
    """
    from ..api.client import serving
    from ..ui import issue_signin, signin_url

    home = home_of(ctx)
    state = serving(home.path)
    status = ride(ctx, "GET", "/api/v1/status") if state else None
    if state is None or status is None or not state.get("local_url"):
        raise click.ClickException("no node serves this home on a TCP port: start "
                                   "'usagi serve' first (the web UI is on its local listener)")
    code = issue_signin(home, user)
    url = signin_url(str(state["local_url"]), code)
    opened = False
    if open_ or (open_ is None and _desktop()):
        opened = webbrowser.open(url)

    def human() -> None:
        click.echo(f"open this link to sign in{' as ' + printable(user) if user else ''} "
                   "(it works once, within 15 minutes):")
        click.echo(f"    {url}")

    emit(ctx, {"url": url, "user": user, "opened": opened}, human)
