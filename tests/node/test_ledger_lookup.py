"""Partner lookup and rotation aliases: what one query each must still answer."""

from __future__ import annotations

from pathlib import Path

from kernel import Identity
from usagi_p2p.ledger import Ledger

A, B, C, D = (Identity(bytes([i]) * 32).did for i in range(1, 5))


async def test_find_partner_by_did_name_and_prefix(tmp_path: Path) -> None:
    async with Ledger(str(tmp_path / "ledger.db")) as ledger:
        await ledger.add_partner(A, "Osaka Precision", "http://127.0.0.1:1", None)
        await ledger.add_partner(B, "Osaka Steel", "http://127.0.0.1:2", None)
        await ledger.add_partner(C, "Kanto", "http://127.0.0.1:3", None)
        assert (await ledger.find_partner(B)).name == "Osaka Steel"  # type: ignore[union-attr]
        assert (await ledger.find_partner("osaka precision")).did == A  # type: ignore[union-attr]
        assert (await ledger.find_partner("Kan")).did == C  # type: ignore[union-attr]
        assert await ledger.find_partner("Osaka") is None  # two match: ambiguous
        assert await ledger.find_partner("Nagoya") is None
        # A name that is a prefix of another but matches exactly wins.
        await ledger.add_partner(D, "Kanto Machine", "http://127.0.0.1:4", None)
        assert (await ledger.find_partner("kanto")).did == C  # type: ignore[union-attr]
        # A rotated partner is found by its DID, not by its name.
        await ledger.partner_rotated(C, D, valid_until=0.0)
        assert (await ledger.find_partner(C)).status == "rotated"  # type: ignore[union-attr]
        assert (await ledger.find_partner("Kanto")).did == D  # type: ignore[union-attr]


async def test_aliases_follow_both_kinds_of_rotation(tmp_path: Path) -> None:
    async with Ledger(str(tmp_path / "ledger.db")) as ledger:
        assert await ledger.aliases() == {}
        await ledger.record_rotation(A, B, 0.0, b"statement")  # ours
        await ledger.add_partner(C, "Kanto", "http://127.0.0.1:3", None)
        await ledger.partner_rotated(C, D, valid_until=0.0)  # a partner's
        assert await ledger.aliases() == {A: B, C: D}


async def test_a_name_prefix_is_text_not_a_pattern(tmp_path: Path) -> None:
    async with Ledger(str(tmp_path / "ledger.db")) as ledger:
        await ledger.add_partner(A, "Sato_Kogyo", "http://127.0.0.1:1", None)
        await ledger.add_partner(B, "100% Organic", "http://127.0.0.1:2", None)
        await ledger.add_partner(C, "SatoXKogyo", "http://127.0.0.1:3", None)
        assert (await ledger.find_partner("Sato_")).did == A  # type: ignore[union-attr]
        assert (await ledger.find_partner("100%")).did == B  # type: ignore[union-attr]
        assert await ledger.find_partner("%") is None  # no name starts with "%"
        assert await ledger.find_partner("Sato\\") is None


async def test_names_match_caselessly_in_any_script(tmp_path: Path) -> None:
    async with Ledger(str(tmp_path / "ledger.db")) as ledger:
        await ledger.add_partner(A, "Ärzte GmbH", "http://127.0.0.1:1", None)
        await ledger.add_partner(B, "Großhandel Süd", "http://127.0.0.1:2", None)
        await ledger.add_partner(C, "ＡＢＣ Foods", "http://127.0.0.1:3", None)  # full-width
        await ledger.add_partner(D, "大阪精密", "http://127.0.0.1:4", None)
        assert (await ledger.find_partner("ärzte")).did == A  # type: ignore[union-attr]
        assert (await ledger.find_partner("A\u0308RZTE")).did == A  # decomposed Ä  # type: ignore[union-attr]
        assert (await ledger.find_partner("GROSSHANDEL")).did == B  # type: ignore[union-attr]
        assert (await ledger.find_partner("großhandel süd")).did == B  # type: ignore[union-attr]
        assert (await ledger.find_partner("abc")).did == C  # type: ignore[union-attr]
        assert (await ledger.find_partner("大阪")).did == D  # type: ignore[union-attr]
        assert await ledger.find_partner("arzte") is None  # an accent is not a case
        assert await ledger.find_partner("Süd") is None  # a prefix, not a substring
