"""The machinery plugin: part descriptions, series part numbers, design vs purchasing.

Implements docs/plugins.md ("machinery"). The machine-tool trade writes
lines like ``M6x20 SUS304 hex bolt``, ``六角ボルト M6×20 SUS304``,
``φ10 4-flute carbide end mill`` or a maker's series part number with option
codes (``MISUMI SFJ10-100-F5``, ``NSK 6204ZZ``). :meth:`Machinery.extract`
turns such text into ``ext.machinery`` fields (thread, pitch, length,
diameter, material, part type, flutes, tool material, maker, part number,
series, options, bearing bore) without any product master.

Design and purchasing are kept apart: a design specification travels as its
own kind (``machinery.design_spec``, which requires a ``drawing`` number); a
purchasing document (quote, order) refers to it with a line's
``design_ref``. A purchasing line marked ``role: design`` gets a warning.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, Final

from kernel.plugin import Finding, required_findings

from ._text import line_ext, normalize

__all__ = ["Machinery", "plugin"]

_NUM: Final = r"\d+(?:\.\d+)?"
# M6, M6x20, M8x1.25, M8x1.25x30 (metric ISO thread, pitch optional, then length).
_THREAD_RE: Final = re.compile(rf"(?<![A-Za-z0-9])M({_NUM})(?:\s*x\s*({_NUM}))?(?:\s*x\s*({_NUM}))?")
_DIAMETER_RE: Final = re.compile(rf"φ\s*({_NUM})")
_LENGTH_RE: Final = re.compile(rf"(?<![A-Za-z])L\s*=?\s*({_NUM})\s*(?:mm)?(?![0-9])")
_FLUTES_RE: Final = re.compile(r"(\d{1,2})\s*(?:-?\s*flutes?|枚刃)", re.IGNORECASE)
_MATERIAL_RE: Final = re.compile(
    r"(?<![A-Za-z0-9])(SUS\d{3}[A-Z]{0,2}|SS\d{3}|S\d{2}C|SCM\d{3}|SCr\d{3}|SK[DHS]?\d{1,2}|"
    r"A\d{4}|C\d{4}|SPCC|SPHC|SWCH\d{1,2}A?|FC\d{3}|FCD\d{3})(?![A-Za-z0-9])")
_MATERIAL_WORDS: Final = (
    (re.compile(r"stainless|ステンレス|ステン", re.I), "stainless"),
    (re.compile(r"brass|真鍮|黄銅", re.I), "brass"),
    (re.compile(r"alumin(?:i)?um|アルミ", re.I), "aluminium"),
    (re.compile(r"steel|鉄|スチール", re.I), "steel"),
)
_TOOL_MATERIAL: Final = (
    (re.compile(r"carbide|超硬", re.I), "carbide"),
    (re.compile(r"\bHSS\b|high[- ]speed steel|ハイス", re.I), "HSS"),
    (re.compile(r"\bCBN\b", re.I), "CBN"),
)
# Longest names first: "六角穴付きボルト" must win over "六角ボルト".
_PART_TYPES: Final = (
    (re.compile(r"socket head cap screw|hex socket|六角穴付き?ボルト|キャップスクリュー|キャップボルト",
                re.I), "socket_head_cap_screw"),
    (re.compile(r"hex(?:agon)? bolt|六角ボルト", re.I), "hex_bolt"),
    (re.compile(r"set screw|止めねじ|イモネジ", re.I), "set_screw"),
    (re.compile(r"\bnuts?\b|ナット", re.I), "nut"),
    (re.compile(r"washers?|ワッシャー?|座金", re.I), "washer"),
    (re.compile(r"end ?mill|エンドミル", re.I), "end_mill"),
    (re.compile(r"\bdrills?\b|ドリル", re.I), "drill"),
    (re.compile(r"\btaps?\b|タップ", re.I), "tap"),
    (re.compile(r"bearings?|ベアリング|軸受", re.I), "bearing"),
    (re.compile(r"shafts?|シャフト", re.I), "shaft"),
)
_MAKERS: Final = {
    "MISUMI": "MISUMI", "ミスミ": "MISUMI", "NSK": "NSK", "NTN": "NTN", "KOYO": "JTEKT",
    "JTEKT": "JTEKT", "THK": "THK", "SMC": "SMC", "OSG": "OSG", "IKO": "IKO",
    "MITSUBISHI": "MITSUBISHI", "三菱": "MITSUBISHI", "SUMITOMO": "SUMITOMO", "KYOCERA": "KYOCERA",
    "YAMAWA": "YAMAWA", "NACHI": "NACHI", "不二越": "NACHI", "SANDVIK": "SANDVIK",
}
_MAKER_RE: Final = re.compile(
    r"(?<![A-Za-z])(" + "|".join(sorted(_MAKERS, key=len, reverse=True)) + r")\s+"
    r"([A-Z0-9][A-Z0-9./-]{2,39})", re.IGNORECASE)
# A catalogue number without a maker: letters, digits, at least one hyphen (SFJ10-100-F5).
_PART_NO_RE: Final = re.compile(r"(?<![A-Za-z0-9])([A-Z]{2,6}\d{1,4}(?:-[A-Z0-9.]{1,8}){1,6})(?![A-Za-z0-9])")
# Deep-groove ball bearings: series 60/62/63/68/69, bore code, seals, clearance.
_BEARING_RE: Final = re.compile(r"(6[0-9])(\d{2})((?:ZZ|2RS|DDU|LLU|VV|RS|Z|DU)?)((?:C[2-5])?)")
_BORE_CODES: Final = {"00": 10, "01": 12, "02": 15, "03": 17}
_DESIGN_REF_RE: Final = re.compile(
    r"(?:図番|図面番号|drawing(?: no\.?)?|dwg\.?)\s*[:#]?\s*([A-Z0-9][A-Z0-9_./-]{1,39})", re.I)

_PURCHASING: Final = frozenset({"quote", "order", "order_response", "delivery_note", "invoice"})


def _first(table: tuple[tuple[re.Pattern[str], str], ...], text: str) -> str | None:
    for pattern, value in table:
        if pattern.search(text):
            return value
    return None


def _part_number(number: str, out: dict[str, str]) -> None:
    """Split a catalogue number into series, options (and a bearing's bore)."""
    number = number.upper().rstrip(".,")
    out["part_number"] = number
    bearing = _BEARING_RE.fullmatch(number)
    if bearing:
        series, code, seal, clearance = bearing.groups()
        out["series"] = series
        out["bore"] = str(_BORE_CODES.get(code, int(code) * 5))
        options = [o for o in (seal, clearance) if o]
        if options:
            out["options"] = ",".join(options)
        out.setdefault("part_type", "bearing")
        return
    head, *rest = number.split("-")
    series = re.match(r"[A-Z]+", head)
    if series:
        out["series"] = series.group(0)
    # Purely numeric segments are sizes (diameter, length); a segment that
    # starts with a letter is an option code (F5, N, KC…).
    options = [seg for seg in rest if seg[:1].isalpha()]
    if options:
        out["options"] = ",".join(options)


class Machinery:
    """Machine tools and parts: threads, materials, tools, series numbers."""

    name = "machinery"
    version = "1.0"
    namespace = "machinery"
    kinds: Mapping[str, tuple[str, ...]] = {"machinery.design_spec": ("drawing",)}
    line_fields: Mapping[str, str] = {
        "machinery.thread": "metric thread size, e.g. 'M6'",
        "machinery.pitch": "thread pitch in mm, e.g. '1.25'",
        "machinery.length": "length in mm (a bolt's under-head length)",
        "machinery.diameter": "diameter in mm (φ)",
        "machinery.material": "material code or word, e.g. 'SUS304', 'S45C', 'stainless'",
        "machinery.part_type": "hex_bolt, socket_head_cap_screw, nut, washer, end_mill, drill, "
                               "tap, bearing, shaft, set_screw",
        "machinery.flutes": "number of flutes of a cutting tool",
        "machinery.tool_material": "carbide, HSS or CBN",
        "machinery.maker": "maker, e.g. 'MISUMI', 'NSK'",
        "machinery.part_number": "the maker's catalogue number, e.g. 'SFJ10-100-F5'",
        "machinery.series": "the series part of a catalogue number, e.g. 'SFJ', '62'",
        "machinery.options": "option codes, comma separated, e.g. 'F5' or 'ZZ,C3'",
        "machinery.bore": "a bearing's bore in mm, from its bore code",
        "machinery.design_ref": "drawing number of the design specification this line buys to",
        "machinery.role": "'design' or 'purchase': which side of the house wrote the line",
    }

    def extract(self, line_text: str) -> dict[str, str]:
        text = normalize(line_text)
        out: dict[str, str] = {}
        thread = _THREAD_RE.search(text)
        if thread:
            size, second, third = thread.groups()
            out["thread"] = f"M{size}"
            if third is not None:
                out["pitch"], out["length"] = second, third
            elif second is not None:
                # M8x1.25 names a pitch; M6x20 a length. A pitch is a fraction of
                # the size, a length is not.
                if "." in second and float(second) < float(size) / 2:
                    out["pitch"] = second
                else:
                    out["length"] = second
        diameter = _DIAMETER_RE.search(text)
        if diameter:
            out["diameter"] = diameter.group(1)
        length = _LENGTH_RE.search(text)
        if length and "length" not in out:
            out["length"] = length.group(1)
        material = _MATERIAL_RE.search(text)
        word = _first(_MATERIAL_WORDS, text)
        if material:
            out["material"] = material.group(1).upper()
        elif word:
            out["material"] = word
        tool = _first(_TOOL_MATERIAL, text)
        if tool:
            out["tool_material"] = tool
        flutes = _FLUTES_RE.search(text)
        if flutes:
            out["flutes"] = flutes.group(1)
        part_type = _first(_PART_TYPES, text)
        if part_type:
            out["part_type"] = part_type
        maker = _MAKER_RE.search(text)
        if maker:
            out["maker"] = _MAKERS.get(maker.group(1).upper(), _MAKERS.get(maker.group(1), ""))
            _part_number(maker.group(2), out)
        else:
            number = _PART_NO_RE.search(text)
            if number and not _THREAD_RE.fullmatch(number.group(1)):
                _part_number(number.group(1), out)
        design = _DESIGN_REF_RE.search(text)
        if design:
            out["design_ref"] = design.group(1)
        return out

    def validate(self, document: Mapping[str, Any]) -> list[Finding]:
        findings = required_findings(self, document)
        kind = document.get("kind")
        lines = document.get("lines")
        for i, line in enumerate(lines if type(lines) is list else []):
            fields = line_ext(line, self.namespace)
            path = f"lines[{i}].ext.machinery"
            if fields.get("role") == "design" and kind in _PURCHASING:
                findings.append(Finding(
                    self.name, "warning", f"{path}.role", "design_on_purchase",
                    "a design specification line on a purchasing document; send it as a "
                    "machinery.design_spec and refer to it with design_ref"))
            thread = fields.get("thread")
            if thread is not None and (type(thread) is not str
                                       or not re.fullmatch(r"M\d+(\.\d+)?", thread)):
                findings.append(Finding(self.name, "warning", f"{path}.thread", "bad_thread",
                                        f"not a metric thread size such as 'M6': {thread!r}"))
            for key in ("length", "diameter", "pitch", "bore"):
                value = fields.get(key)
                if value is not None and (type(value) is not str
                                          or not re.fullmatch(r"\d+(\.\d+)?", value)):
                    findings.append(Finding(self.name, "warning", f"{path}.{key}", "bad_number",
                                            f"{key} is a decimal string in mm: {value!r}"))
        return findings


#: The entry point ``machinery = "plugins.machinery:plugin"`` loads this instance.
plugin = Machinery()
