"""The Jinja2 environment of the web UI: translation and the filters templates use.

Autoescaping is on for every template (usagi_p2p/company/ui/app.py), and
nothing here marks text safe: a partner's name, line or note is always
escaped. ``_()`` in a template translates through the page's language
(``lang`` in the context), newstyle: ``_("%(n)s lines", n=3)`` escapes ``n``.
Filters that depend on the language read it from the context too.
"""

from __future__ import annotations

from typing import Any

import jinja2
from jinja2 import pass_context
from jinja2.runtime import Context

from .i18n import day, money, quantity, translations, when

__all__ = ["setup_environment"]


@pass_context
def _gettext(context: Context, message: str) -> str:
    return translations(context["lang"]).gettext(message)


@pass_context
def _ngettext(context: Context, singular: str, plural: str, n: int) -> str:
    return translations(context["lang"]).ngettext(singular, plural, n)


@pass_context
def _money(context: Context, value: Any, currency: Any = None) -> str:
    return money(value, currency, context["lang"])


@pass_context
def _quantity(context: Context, value: Any) -> str:
    return quantity(value, context["lang"])


@pass_context
def _when(context: Context, value: Any) -> str:
    return when(value, context["lang"])


@pass_context
def _day(context: Context, value: Any) -> str:
    return day(value, context["lang"])


def _short_cid(value: Any) -> str:
    text = str(value)
    return f"{text[:10]}…{text[-6:]}" if len(text) > 20 else text


def _as_text(value: Any) -> str:
    """A plugin field's value as text (lists joined, maps as key=value)."""
    if isinstance(value, dict):
        return ", ".join(f"{k}={_as_text(v)}" for k, v in value.items())
    if isinstance(value, list | tuple):
        return ", ".join(_as_text(v) for v in value)
    return "" if value is None else str(value)


def setup_environment(environment: jinja2.Environment) -> None:
    environment.install_gettext_callables(  # type: ignore[attr-defined]
        _gettext, _ngettext, newstyle=True)
    environment.filters.update({
        "money": _money, "qty": _quantity, "when": _when, "day": _day, "short": _short_cid,
        "text": _as_text,
    })
