"""The web UI's languages: message catalogs, the choice of language, dates and money per locale.

Every string a page shows is an English message id in a template or in this
package (``_()`` / ``N_()``), translated through the gettext catalog
``locale/LANG/LC_MESSAGES/messages.po`` (docs/ui.md, "Adding a string").
The ``.po`` files are the only form kept in the repository: they are read
with Babel when the UI starts (a few milliseconds for a few hundred
messages), so an editable install, a wheel and a fresh clone all run the
catalog exactly as written, with no compile step to forget and no ``.mo``
to go stale. tests/ui/test_catalog.py fails when a message of the code has
no translation.

The language comes from the ``usagi_lang`` cookie (the switch in the page
header), else the browser's ``Accept-Language`` (RFC 9110 section 12.5.4),
else English. Money is a decimal string in the document: it is shown with
the currency's own digits (JPY none) unless the document has more, which are
kept (a form never rounds what was signed); Japanese pages write yen as
``1,234円``, English ones as ``¥1,234``.
"""

from __future__ import annotations

import functools
import gettext
import io
import re
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from importlib import resources
from typing import Final

from babel import Locale
from babel.dates import format_date, format_datetime
from babel.messages.mofile import write_mo
from babel.messages.pofile import read_po
from babel.numbers import format_currency, format_decimal

__all__ = ["LANGUAGES", "DEFAULT", "COOKIE", "N_", "translations", "negotiate", "money",
           "quantity", "when", "day", "parse_time"]

#: The languages of the UI, with the name each has in itself (for the switch).
LANGUAGES: Final = {"ja": "日本語", "en": "English"}
DEFAULT: Final = "en"
#: The cookie that holds a person's choice of language.
COOKIE: Final = "usagi_lang"
_BABEL: Final = {"ja": "ja_JP", "en": "en_US"}


def N_(message: str) -> str:
    """Mark ``message`` for the catalog where it is defined; translated where shown."""
    return message


@functools.cache
def translations(language: str) -> gettext.NullTranslations:
    """The catalog of ``language`` (English is the messages themselves)."""
    if language not in LANGUAGES or language == "en":
        return gettext.NullTranslations()
    source = resources.files(__package__).joinpath("locale", language, "LC_MESSAGES",
                                                   "messages.po")
    with source.open("rb") as handle:
        catalog = read_po(handle, locale=language)
    compiled = io.BytesIO()
    write_mo(compiled, catalog, use_fuzzy=False)
    compiled.seek(0)
    return gettext.GNUTranslations(compiled)


def negotiate(cookie: str | None, accept_language: str | None) -> str:
    """The language to answer in: the cookie's, else the best of Accept-Language."""
    if cookie in LANGUAGES:
        return str(cookie)
    best, best_q = DEFAULT, 0.0
    for position, part in enumerate((accept_language or "").split(",")[:32]):
        tag, _, params = part.strip().partition(";")
        q = 1.0
        params = params.strip()
        if params.startswith("q="):
            try:
                q = float(params[2:])
            except ValueError:
                q = 0.0
        primary = tag.strip().split("-", 1)[0].lower()
        # Equal weights keep the order the browser sent.
        if primary in LANGUAGES and q > best_q and q > 0 and position < 32:
            best, best_q = primary, q
    return best


@functools.cache
def _locale(language: str) -> Locale:
    return Locale.parse(_BABEL.get(language, "en_US"))


#: What a decimal of a document looks like (docs/spec.md section 5), and nothing
#: else: "1e999999999" would be a number Babel spends a gigabyte writing out.
_DECIMAL: Final = re.compile(r"-?[0-9]{1,27}(\.[0-9]{1,12})?")


def _decimal(value: object) -> Decimal | None:
    if not isinstance(value, str | int) or isinstance(value, bool) \
            or not _DECIMAL.fullmatch(str(value)):
        return None
    try:
        return Decimal(str(value))
    except InvalidOperation:
        return None


def money(value: object, currency: object, language: str) -> str:
    """``value`` (a decimal string) as money in ``currency`` for ``language``;
    the text as written when it is not a number."""
    number = _decimal(value)
    if number is None:
        return "" if value is None else str(value)
    code = currency if isinstance(currency, str) and len(currency) == 3 else None
    if code is None:
        return format_decimal(number, locale=_locale(language), decimal_quantization=False)
    if code == "JPY":
        # As written: a unit price of 12.50 yen shows as 12.50, not 12.5 (no
        # decimals when it has none, as JPY amounts are).
        exponent = number.as_tuple().exponent
        digits = -exponent if isinstance(exponent, int) and exponent < 0 else 0
        frac = "." + "0" * digits if digits else ""
        pattern = f"#,##0{frac}\u5186" if language == "ja" else f"\u00a4#,##0{frac}"
        text = format_currency(number, "JPY", pattern, locale=_locale(language),
                               currency_digits=False, decimal_quantization=True)
        return text.replace("\uffe5", "\u00a5")
    text = format_currency(number, code, locale=_locale(language), decimal_quantization=False)
    return text.replace("\uffe5", "\u00a5")  # one yen sign, as on the forms people print


def quantity(value: object, language: str) -> str:
    number = _decimal(value)
    if number is None:
        return "" if value is None else str(value)
    return format_decimal(number, locale=_locale(language), decimal_quantization=False)


def parse_time(value: object) -> datetime | None:
    """An RFC 3339 time of a document (``…Z``), or None."""
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=UTC)
    if isinstance(value, int | float) and not isinstance(value, bool):
        return datetime.fromtimestamp(value, UTC)
    if not isinstance(value, str):
        return None
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def when(value: object, language: str) -> str:
    """A moment as a date and time in the machine's time zone."""
    moment = parse_time(value)
    if moment is None:
        return "" if value is None else str(value)
    return format_datetime(moment.astimezone(), "medium", locale=_locale(language))


def day(value: object, language: str) -> str:
    """A moment as a date (a form's issue date, a due date)."""
    moment = parse_time(value)
    if moment is None:
        return "" if value is None else str(value)
    local = moment.astimezone()
    return format_date(local.date(), "long", locale=_locale(language))
