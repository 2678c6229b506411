"""What the company's own pages share (partners, archive, status, settings): who may
change things, reading a form, an error in words.

Changing partners, plugins and users, and exporting the archive, is the
company's: the ``admin`` scope of the local API (docs/api.md). A person signed
in for the company (``usagi ui``) may; a user signed in as themselves
(``usagi ui --user NAME``) sees these pages read-only, and a form posted
anyway is refused with ``forbidden_scope`` (403, as a token of a lower scope
is by the API), nothing done.
"""

from __future__ import annotations

from typing import Final

from aiohttp import web

from kernel.errors import UsagiError

from .base import visitor
from .i18n import quantity

__all__ = ["ForbiddenError", "company_only", "is_company", "form_of", "form_lists", "problem_text",
           "FIELD_MAX", "size_text"]

#: The longest text one form field may hold (an invitation, a plugin's settings).
FIELD_MAX: Final = 64 << 10


class ForbiddenError(UsagiError):
    """Only the company may do this: sign in with 'usagi ui' (not as a user)."""

    code = "forbidden_scope"


def is_company(request: web.Request) -> bool:
    """Whether the person is signed in for the company itself (not as one of its users)."""
    who = visitor(request)
    return who.session is not None and who.user is None


def company_only(request: web.Request) -> None:
    """Refuse (403 ``forbidden``) a change a user signed in as themselves asks for."""
    if not is_company(request):
        raise ForbiddenError("only the company may change this: sign in with 'usagi ui', "
                             "not as a user")


async def form_of(request: web.Request) -> dict[str, str]:
    """The posted form's text fields (each at most :data:`FIELD_MAX` characters);
    a field given twice keeps its first value, a file field is left out."""
    posted = await request.post()
    fields: dict[str, str] = {}
    for key, value in posted.items():
        if isinstance(value, str) and key not in fields:
            fields[key] = value[:FIELD_MAX]
    return fields


async def form_lists(request: web.Request) -> dict[str, list[str]]:
    """Every value of each text field (checkboxes of one name)."""
    posted = await request.post()
    fields: dict[str, list[str]] = {}
    for key, value in posted.items():
        if isinstance(value, str):
            fields.setdefault(key, []).append(value[:FIELD_MAX])
    return fields


def problem_text(exc: UsagiError) -> str:
    """An error as a person reads it: the node's message and the spec's code."""
    return f"{exc} ({exc.code})"


_UNITS: Final = ("B", "KiB", "MiB", "GiB", "TiB")


def size_text(size: int, language: str) -> str:
    """A number of bytes for a person: ``12.5 MiB`` (binary units, as the config's quotas)."""
    value, unit = float(size), 0
    while value >= 1024 and unit < len(_UNITS) - 1:
        value, unit = value / 1024, unit + 1
    shown = f"{value:.0f}" if unit == 0 or value >= 100 else f"{value:.1f}"
    return f"{quantity(shown, language)} {_UNITS[unit]}"
