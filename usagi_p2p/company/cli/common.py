"""What every ``usagi`` command shares: running, passphrases, output and errors.

One error path (:func:`fail`): every command's typed error (a
``kernel.errors.UsagiError``) is printed as ``error [code]: message`` on
standard error and exits with the code the node's one table gives
(``usagi_p2p.node.errors.exit_code``, docs/spec.md section 14), whether it was
raised inside a coroutine (:func:`run`) or in a command's own code (the root
group, :class:`Group`, catches what is left). Usage mistakes stay click's:
exit 2. Anything printed that a partner or a plugin may have written goes
through ``printable``.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import sys
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from datetime import datetime
from typing import TYPE_CHECKING, Any, Final, NoReturn, TypeVar

import click

from kernel.errors import UsagiError

from ...node.errors import PassphraseError, UnknownCodeError, exit_code
from ...node.terminal import json_text, printable

__all__ = ["Group", "fail", "errors", "run", "with_node", "ride", "home_of", "wants_json",
           "passphrase",
           "new_passphrase", "user_passphrase", "user_passphrase_env", "jsonable", "emit", "table"]

if TYPE_CHECKING:  # the node (aiohttp, the stores) is imported by the commands that open it
    from ...node.home import Home
    from ...node.node import Node

T = TypeVar("T")

log = logging.getLogger("usagi.cli")


# -- errors -------------------------------------------------------------------


def fail(exc: UsagiError) -> NoReturn:
    """The one way a command fails on a typed error: its code, its message, its exit code."""
    # The traceback is for whoever runs with -v; the message is for everyone.
    log.info("command failed", exc_info=exc)
    try:
        code = exit_code(exc.code)
    except UnknownCodeError:
        # A code with no row is a bug (docs/spec.md §14): said as one, never a traceback.
        log.error("error code %r has no row in the error table (usagi_p2p/node/errors.py)", exc.code)
        click.echo(printable(f"error [internal_error]: {exc}"), err=True)
        raise SystemExit(exit_code("internal_error")) from None
    click.echo(printable(f"error [{exc.code}]: {exc}"), err=True)
    raise SystemExit(code)


@contextmanager
def errors() -> Iterator[None]:
    """Typed errors raised inside go to :func:`fail`."""
    try:
        yield
    except UsagiError as exc:
        fail(exc)


def run(coro: Awaitable[T]) -> T:
    """Run a command's coroutine to its end; a typed error goes to :func:`fail`."""
    import asyncio

    try:
        return asyncio.run(coro)  # type: ignore[arg-type]
    except UsagiError as exc:
        fail(exc)


class Group(click.Group):
    """The root ``usagi`` group: the last net of the one error path, and escaped messages."""

    #: (command, example) pairs shown under "Examples" in ``usagi --help``.
    examples: dict[str, str] = {}

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except UsagiError as exc:
            fail(exc)
        except click.ClickException as exc:
            # A message may quote what a partner or a plugin wrote. (``message``
            # is typed Final: it is set once, here, before anything prints it.)
            exc.__dict__["message"] = printable(exc.message)
            raise

    def format_epilog(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        with formatter.section("Examples"):
            formatter.write_dl(list(self.examples.items()))


# -- the context --------------------------------------------------------------


def home_of(ctx: click.Context) -> Home:
    """The ``--home`` the root group set up."""
    home: Home = ctx.obj["home"]
    return home


def wants_json(ctx: click.Context) -> bool:
    """Whether ``--json`` was given."""
    return bool(ctx.obj and ctx.obj.get("json"))


async def with_node(ctx: click.Context, fn: Callable[[Node], Awaitable[T]]) -> T:
    """Open this home's node (asking for its passphrase), run ``fn`` on it, close it."""
    from ...node.node import Node

    home = home_of(ctx)
    async with Node.load(home, passphrase(home)) as node:
        return await fn(node)


def ride(ctx: click.Context, method: str, path: str, body: dict[str, Any] | None = None,
         *, timeout: float = 10.0) -> Any | None:
    """The answer of the node serving this home to ``method path`` of its local API,
    or None when no node serves it (the command then opens the node itself: see
    :func:`with_node`). No passphrase is asked: the running node holds the key.

    A problem answer is raised as a typed error with the problem's code
    (``usagi_p2p.company.api.client.Problem``), so it takes the one error path
    (:func:`fail`) with the exit code the command has without a node.
    """
    from ..api.client import request

    answer = request(home_of(ctx).path, method, path, body, timeout=timeout)
    return None if answer is None else answer[1]


# -- passphrases --------------------------------------------------------------


def passphrase(home: Home) -> str | None:
    """The identity's passphrase: ``$USAGI_PASSPHRASE``, else a prompt; None when
    the key is stored without one."""
    if not home.key_is_protected():
        return None
    env = os.environ.get("USAGI_PASSPHRASE")
    if env is not None:
        return env
    if not sys.stdin.isatty():
        raise PassphraseError("the identity is protected: set USAGI_PASSPHRASE")
    return str(click.prompt("Passphrase", hide_input=True))


def new_passphrase(env: str, what: str, missing: str) -> str:
    """A new passphrase: ``$env``, else asked twice; ``missing`` explains what to do
    when nobody can be asked."""
    given = os.environ.get(env)
    if given is not None:
        return given
    if not sys.stdin.isatty():
        raise PassphraseError(missing)
    return str(click.prompt(f"New passphrase{what}", hide_input=True, confirmation_prompt=True))


def user_passphrase_env(name: str) -> str:
    """The environment variable that holds user ``name``'s passphrase:
    ``USAGI_PASSPHRASE_`` and the name in upper case, ``-`` and ``.`` as ``_``
    (``sato-k`` -> ``USAGI_PASSPHRASE_SATO_K``), so that a shell can set it."""
    return "USAGI_PASSPHRASE_" + name.upper().replace("-", "_").replace(".", "_")


def user_passphrase(home: Home, name: str) -> str | None:
    """A user key's passphrase: ``$USAGI_PASSPHRASE_<NAME>`` (:func:`user_passphrase_env`),
    else a prompt."""
    from ...node.users import user_key_is_protected

    if not user_key_is_protected(home, name):
        return None
    env = os.environ.get(user_passphrase_env(name))
    if env is not None:
        return env
    if not sys.stdin.isatty():
        raise PassphraseError(f"the key of user {name} is protected: set "
                              f"{user_passphrase_env(name)}")
    return str(click.prompt(f"Passphrase of {name}", hide_input=True))


# -- output -------------------------------------------------------------------


def jsonable(value: Any) -> Any:
    """``value`` as JSON values: CIDs as text, bytes as hex, times in ISO 8601,
    named tuples and dataclasses by field."""
    cids = sys.modules.get("kernel.cid")  # not loaded: nothing here is a CID
    if cids is not None and isinstance(value, cids.CID):
        return str(value)
    if isinstance(value, bytes):
        return value.hex()
    if isinstance(value, dict):
        return {k: jsonable(v) for k, v in value.items()}
    if isinstance(value, tuple) and hasattr(value, "_asdict"):  # a NamedTuple: by field
        return {k: jsonable(v) for k, v in value._asdict().items()}
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    return value


def emit(ctx: click.Context, data: Any, human: Callable[[], None]) -> None:
    """``data`` as JSON with ``--json``, else what ``human`` prints."""
    if wants_json(ctx):
        click.echo(json_text(jsonable(data)))
    else:
        human()


#: Columns a person copies whole (a CID, a DID, a time): never shortened.
WHOLE: Final = frozenset({"cid", "did", "issued"})


def table(headers: list[str], rows: list[list[Any]]) -> None:
    """Rows as a table. Cells are plain text: names, refs and notes come from
    partners, so no Rich markup or emoji codes are read in them (``did:key:``
    must not turn into a key emoji, nor ``[/]`` into an error), and control
    characters are shown as escapes (:func:`printable`). Piped output is never
    shortened."""
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    cells = [[Text(printable(c)) if c is not None else Text("") for c in row] for row in rows]
    grid = Table(box=None, pad_edge=False)
    for i, header in enumerate(headers):
        whole = header in WHOLE
        width = max([len(header), *(len(r[i]) for r in cells)]) if whole else None
        grid.add_column(header, no_wrap=whole, min_width=width)
    for row in cells:
        grid.add_row(*row)
    tty = sys.stdout.isatty()
    Console(emoji=False, highlight=False, markup=False, width=None if tty else 10_000).print(grid)
