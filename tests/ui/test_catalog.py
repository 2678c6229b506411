"""The UI's languages: every message translated, the choice of language, money and dates per locale."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from babel.messages.extract import extract_from_dir
from babel.messages.pofile import read_po
from hypothesis import given
from hypothesis import strategies as st

from usagi_p2p.company.ui import i18n

UI = Path(__file__).resolve().parents[2] / "usagi_p2p" / "company" / "ui"


def _messages() -> set[str]:
    """Every message of the UI's code and templates, as 'make messages' extracts them."""
    method_map = [("**.py", "python"), ("**/templates/**.html", "jinja2")]
    options = {"**/templates/**.html": {"extensions": "jinja2.ext.i18n"}}
    found = set()
    for _, _, message, _, _ in extract_from_dir(str(UI), method_map, options,
                                                keywords={"_": None, "N_": None, "gettext": None,
                                                          "ngettext": (1, 2)}):
        found.add(message if isinstance(message, str) else message[0])
    return found


def test_every_message_has_a_japanese_translation() -> None:
    with (UI / "locale" / "ja" / "LC_MESSAGES" / "messages.po").open("rb") as handle:
        catalog = read_po(handle, locale="ja")
    # A plural message is (singular, plural) with one string per plural form (ja has one).
    translated = {m.id if isinstance(m.id, str) else m.id[0]: m.string for m in catalog
                  if m.id and m.string and all(m.string) and not m.fuzzy}
    messages = _messages()
    assert len(messages) > 100
    assert sorted(messages - set(translated)) == []
    # What the catalog says is what a Japanese page shows.
    assert i18n.translations("ja").gettext("Quote") == "見積書"
    assert i18n.translations("ja").gettext("Invoice") == "請求書"
    assert i18n.translations("en").gettext("Quote") == "Quote"


def test_the_language_comes_from_the_switch_then_the_browser() -> None:
    assert i18n.negotiate(None, "ja-JP,ja;q=0.9,en-US;q=0.8") == "ja"
    assert i18n.negotiate(None, "en-GB,ja;q=0.5") == "en"
    assert i18n.negotiate(None, "fr-FR, ja;q=0.3") == "ja"
    assert i18n.negotiate(None, "fr-FR") == "en"
    assert i18n.negotiate(None, None) == "en"
    assert i18n.negotiate("en", "ja") == "en"
    assert i18n.negotiate("xx", "ja") == "ja"  # a cookie of no language of ours


@given(st.text(max_size=300), st.one_of(st.none(), st.text(max_size=10)))
def test_any_accept_language_gives_a_language_of_ours(header: str, cookie: str | None) -> None:
    assert i18n.negotiate(cookie, header) in i18n.LANGUAGES


def test_money_follows_the_currency_and_the_locale() -> None:
    assert i18n.money("262000", "JPY", "ja") == "262,000円"
    assert i18n.money("262000", "JPY", "en") == "¥262,000"
    assert i18n.money("12.5", "USD", "en") == "$12.50"
    # More digits than the currency has: shown as signed, never rounded.
    assert i18n.money("1234.5", "JPY", "ja") == "1,234.5円"
    assert i18n.money("0.125", "JPY", "en") == "¥0.125"
    assert i18n.money("12.50", "JPY", "ja") == "12.50円"  # a unit price as written
    assert i18n.money("12.50", "JPY", "en") == "¥12.50"
    assert i18n.money("-5", "EUR", "en") == "-€5.00"
    assert i18n.money("twelve", "JPY", "en") == "twelve"  # a partner's text as written
    assert i18n.money("1e999999999", "JPY", "en") == "1e999999999"  # never written out
    assert i18n.money(None, "JPY", "en") == ""
    assert i18n.quantity("1500.250", "en") == "1,500.25"


def test_dates_follow_the_locale() -> None:
    moment = datetime(2026, 12, 6, 12, 0, tzinfo=UTC)
    assert i18n.day("2026-12-06T12:00:00Z", "ja") == "2026年12月6日"
    assert i18n.day(moment, "en") == "December 6, 2026"
    assert i18n.day("not a time", "en") == "not a time"
    assert "2026" in i18n.when("2026-12-06T12:00:00Z", "ja")


def test_the_answer_buttons_follow_the_operations_rules() -> None:
    """Each one-click answer starts from a document its kind is filled from
    (operations.ANSWERS, what 'usagi send --reply-to' uses): no rule of its own."""
    from usagi_p2p.company.ui.document import answers
    from usagi_p2p.node.operations import ANSWERS

    seen = set()
    for kind in ("quote", "order", "order_response", "delivery_note", "invoice", "message"):
        for direction in ("in", "out"):
            for response in (None, "accept", "counter", "reject"):
                for _, answer, _ in answers(kind, direction, response):
                    assert kind in ANSWERS[answer], (kind, direction, response, answer)
                    seen.add(answer)
    assert seen == set(ANSWERS)


def test_the_match_shows_a_unit_price_as_its_document_wrote_it() -> None:
    from kernel import match_thread
    from usagi_p2p.company.ui import commerce

    bolt = {"text": "六角ボルト M6", "qty": "500", "unit": "pcs", "unit_price": "12.50"}
    found = match_thread([("d0", {"kind": "order", "currency": "JPY", "lines": [bolt]}),
                          ("d1", {"kind": "invoice", "currency": "JPY",
                                  "lines": [{**bolt, "amount": "6250"}], "net": "6250"})])
    [item] = commerce.match(found, {})["items"]
    assert item["ordered_price"] == "12.50"  # not the normalised 12.5
    assert i18n.money(item["ordered_price"], "JPY", "ja") == "12.50円"
    assert dict((key, figure) for key, _, figure in item["counts"])["ordered"] == "500"
