"""Composing and answering a document: the form, live extraction, inline validation, sending.

``/compose`` is one form for every kind: the partner (or, answering, the
document answered), a reference, dates, an order response's answer, notes,
and a line table where each line may be pure free text (masterless) with
quantity, unit, unit price and amount beside it. As a line is typed, the
page asks ``/compose/extract`` what the signed-in user's plugins make of it
(``operations.extract_preview``) and shows it beside the line.

Answering (``/compose?reply_to=CID&kind=order``), the form starts from
``operations.answer_body``: the currency, lines and total the answered
document carries, exactly as ``usagi send --reply-to`` fills them.

A post is checked before anything is sent: the form's own rules (a line
needs its text, numbers are decimals, dates are dates) are shown beside the
fields they concern, and what the node refuses (``invalid_document`` and the
kernel's listed problems) above the form; nothing is sent then. Sent, the
document goes through ``operations.send`` (the user's name on it, plugin
fields filled from the text where asked), the delivery loop is woken, and
the browser goes to the document.
"""

from __future__ import annotations

import json
import re
import unicodedata
from dataclasses import dataclass, field
from typing import Any, Final

from aiohttp import web

from kernel.cid import CID
from kernel.errors import UsagiError

from ...node import operations
from .base import node_of, render, see_other, visitor
from .document import parse_cid
from .i18n import N_

__all__ = ["ROUTES", "KINDS", "Draft", "read_draft"]

#: The kinds the form offers (a plugin's kinds are sent through the CLI or the API).
KINDS: Final = ("quote", "order", "order_response", "delivery_note", "invoice", "message",
                "cancel")
_DECIMAL: Final = re.compile(r"-?(0|[1-9][0-9]{0,26})(\.[0-9]{1,12})?")
_CURRENCY: Final = re.compile(r"[A-Z]{3}")
_DATE: Final = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")
#: An order response's answers as the form offers them.
RESPONSE_CHOICES: Final = {"accept": N_("Accept"), "counter": N_("Counter"),
                           "reject": N_("Reject")}
_LINE_FIELDS: Final = ("text", "qty", "unit", "unit_price", "amount")
_NUMBERS: Final = ("qty", "unit_price", "amount")
#: Most lines one form holds (the kernel's limit is 10,000; a person types fewer).
MAX_LINES: Final = 500
SHORT: Final = 800
TEXT: Final = 16000


@dataclass
class Draft:
    """A document being written: the form's values, and what is wrong with them."""

    kind: str = "quote"
    partner: str = ""
    reply_to: str = ""
    ref: str = ""
    currency: str = "JPY"
    valid_until: str = ""
    due: str = ""
    response: str = ""
    note: str = ""
    total: str = ""
    extract: bool = True
    lines: list[dict[str, str]] = field(default_factory=list)
    #: field name (``ref``, ``lines[2].qty``) -> message id
    errors: dict[str, str] = field(default_factory=dict)
    #: What the node refused, in its words.
    refused: str | None = None


def _number(text: str) -> str:
    """A number as typed (full-width digits, thousands separators) as a decimal string."""
    return unicodedata.normalize("NFKC", text).replace(",", "").replace(" ", "").strip()


def _fits(text: str, limit: int) -> bool:
    return len(text.encode("utf-8")) <= limit


def read_draft(form: Any) -> Draft:
    """The draft a posted form holds, every field checked; nothing is sent."""
    def one(name: str) -> str:
        value = form.get(name, "")
        return value.strip() if isinstance(value, str) else ""

    draft = Draft(kind=one("kind"), partner=one("partner"), reply_to=one("reply_to"),
                  ref=one("ref"), currency=unicodedata.normalize("NFKC", one("currency")).upper(),
                  valid_until=one("valid_until"), due=one("due"), response=one("response"),
                  note=one("note"), total=_number(one("total")),
                  extract=form.get("extract") == "on")
    columns = {name: [v if isinstance(v, str) else "" for v in form.getall(f"line-{name}", [])]
               for name in (*_LINE_FIELDS, "ext")}
    count = max((len(v) for v in columns.values()), default=0)
    for i in range(min(count, MAX_LINES)):
        line = {name: (columns[name][i] if i < len(columns[name]) else "").strip()
                for name in (*_LINE_FIELDS, "ext")}
        for name in _NUMBERS:
            line[name] = _number(line[name])
        if any(line[name] for name in _LINE_FIELDS):
            draft.lines.append(line)
    errors = draft.errors
    if draft.kind not in KINDS:
        errors["kind"] = N_("Choose the kind of document.")
    if not draft.reply_to and not draft.partner:
        errors["partner"] = N_("Choose the partner who gets it.")
    if draft.currency and not _CURRENCY.fullmatch(draft.currency):
        errors["currency"] = N_("A currency is three capital letters, such as JPY.")
    if draft.total and not _DECIMAL.fullmatch(draft.total):
        errors["total"] = N_("Write a number, such as 1200 or 12.50.")
    for name in ("valid_until", "due"):
        if getattr(draft, name) and not _DATE.fullmatch(getattr(draft, name)):
            errors[name] = N_("Write a date as YYYY-MM-DD.")
    if draft.kind == "order_response" and draft.response not in RESPONSE_CHOICES:
        errors["response"] = N_("Say whether you accept, counter or reject the order.")
    if not _fits(draft.ref, SHORT):
        errors["ref"] = N_("Too long.")
    if not _fits(draft.note, TEXT):
        errors["note"] = N_("Too long.")
    if count > MAX_LINES:
        errors["lines"] = N_("Too many lines for one form.")
    for i, line in enumerate(draft.lines):
        if not line["text"]:
            errors[f"lines[{i}].text"] = N_("A line needs its text (free text is enough).")
        elif not _fits(line["text"], TEXT):
            errors[f"lines[{i}].text"] = N_("Too long.")
        if not _fits(line["unit"], SHORT):
            errors[f"lines[{i}].unit"] = N_("Too long.")
        for name in _NUMBERS:
            if line[name] and not _DECIMAL.fullmatch(line[name]):
                errors[f"lines[{i}].{name}"] = N_("Write a number, such as 1200 or 12.50.")
        if line["ext"] and _ext(line["ext"]) is None:
            errors[f"lines[{i}].text"] = N_("The plugin fields of this line cannot be read.")
    return draft


def _no_floats(value: Any) -> bool:
    if isinstance(value, dict):
        return all(isinstance(k, str) and _no_floats(v) for k, v in value.items())
    if isinstance(value, list):
        return all(_no_floats(v) for v in value)
    return isinstance(value, str | bool | int) or value is None


def _ext(text: str) -> dict[str, Any] | None:
    """A line's plugin fields carried in the form (JSON), or None when not a map of maps."""
    try:
        value = json.loads(text, parse_float=float)
    except ValueError:
        return None
    if not isinstance(value, dict) or not all(isinstance(v, dict) for v in value.values()) \
            or not _no_floats(value) or len(text) > TEXT:
        return None
    return value


def _day(text: str) -> str:
    return f"{text}T00:00:00Z"


def body_of(draft: Draft) -> dict[str, Any]:
    """The document body a checked draft makes."""
    body: dict[str, Any] = {}
    for name in ("ref", "note", "total"):
        if getattr(draft, name):
            body[name] = getattr(draft, name)
    if draft.currency and (draft.total or any(ln["unit_price"] or ln["amount"]
                                              for ln in draft.lines)):
        body["currency"] = draft.currency
    if draft.valid_until:
        body["valid_until"] = _day(draft.valid_until)
    if draft.due:
        body["due"] = _day(draft.due)
    if draft.kind == "order_response":
        body["response"] = draft.response
    lines = []
    for line in draft.lines:
        entry: dict[str, Any] = {name: line[name] for name in _LINE_FIELDS if line[name]}
        ext = _ext(line["ext"]) if line["ext"] else None
        if ext:
            entry["ext"] = ext
        lines.append(entry)
    if lines:
        body["lines"] = lines
    return body


def _form_lines(lines: Any) -> list[dict[str, str]]:
    """Lines of a document body as the form's rows (plugin fields carried as JSON)."""
    rows = []
    for line in lines or []:
        if not isinstance(line, dict):
            continue
        row = {name: str(line.get(name) or "") for name in _LINE_FIELDS}
        row["ext"] = json.dumps(line["ext"], ensure_ascii=False) \
            if isinstance(line.get("ext"), dict) else ""
        rows.append(row)
    return rows


async def _page(request: web.Request, draft: Draft, *, status: int = 200) -> web.StreamResponse:
    node = node_of(request)
    answering = None
    if draft.reply_to:
        view = await operations.show_document(node, parse_cid(draft.reply_to))
        answering = {"cid": draft.reply_to, "kind": view.document.get("kind"),
                     "ref": view.document.get("ref"),
                     "partner": view.partner_name or view.partner}
    partners = [p.name for p in await operations.partners(node) if p.status == "active"]
    rows = draft.lines or [{name: "" for name in (*_LINE_FIELDS, "ext")}]
    return render(request, "compose.html", {
        "draft": draft, "rows": rows, "kinds": KINDS, "partners": partners,
        "answering": answering, "responses": RESPONSE_CHOICES,
    }, status=status)


async def compose(request: web.Request) -> web.StreamResponse:
    query = request.query
    draft = Draft(kind=query.get("kind", "quote"), partner=query.get("partner", ""),
                  reply_to=query.get("reply_to", ""), response=query.get("response", ""))
    if draft.kind not in KINDS:
        draft.kind = "quote"
    if draft.reply_to:
        cid = parse_cid(draft.reply_to)
        try:
            body = await operations.answer_body(node_of(request), draft.kind, cid)
        except UsagiError as exc:
            if exc.code == "unknown_document":
                raise
            body = {}  # a kind not filled from the answered one: the person writes it
        draft.lines = _form_lines(body.get("lines"))
        draft.currency = str(body.get("currency") or draft.currency)
        draft.total = str(body.get("total") or "")
    return await _page(request, draft)


async def send(request: web.Request) -> web.StreamResponse:
    form = await request.post()
    draft = read_draft(form)
    action = form.get("action")
    if isinstance(action, str) and action != "send":
        # Without our script: the form's own buttons add or remove a row.
        draft.errors = {}
        if action == "add-line":
            draft.lines.append({name: "" for name in (*_LINE_FIELDS, "ext")})
        elif action.startswith("remove-line-") and action[12:].isdigit():
            index = int(action[12:])
            if index < len(draft.lines):
                del draft.lines[index]
        return await _page(request, draft)
    if draft.errors:
        return await _page(request, draft, status=422)
    node = node_of(request)
    reply_to: CID | None = parse_cid(draft.reply_to) if draft.reply_to else None
    try:
        result = await operations.send(node, draft.kind, body_of(draft),
                                       to=None if reply_to else draft.partner,
                                       reply_to=reply_to, user=visitor(request).user,
                                       extract=draft.extract)
    except UsagiError as exc:
        if exc.code == "internal_error":
            raise
        draft.refused = f"[{exc.code}] {exc}"
        return await _page(request, draft, status=422)
    node.wake.set()  # the delivery loop sends it now
    raise see_other(f"/documents/{result.cid}?sent=1")


async def extract(request: web.Request) -> web.StreamResponse:
    """What the user's plugins make of one line (the form asks as the person types)."""
    form = await request.post()
    text = form.get("text")
    kind = form.get("kind")
    if not isinstance(text, str) or not text.strip() or not _fits(text, TEXT):
        return render(request, "extract.html", {"preview": None})
    preview = await operations.extract_preview(
        node_of(request), [text], kind=kind if isinstance(kind, str) and kind in KINDS else "quote",
        user=visitor(request).user)
    line = preview.lines[0]
    return render(request, "extract.html", {"preview": line, "plugins": preview.plugins})


ROUTES: Final = [
    ("GET", "/compose", compose),
    ("POST", "/compose", send),
    ("POST", "/compose/extract", extract),
]
