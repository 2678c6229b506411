"""Which received documents a person has not opened yet: the inbox's unread mark.

Per person (a user, or the company itself): a watermark and the documents
opened since. A received document is unread when it was recorded after the
watermark and is not among those opened. Someone seen for the first time
starts with the watermark at that moment (the documents of before are not
news to them); "mark all read" moves it to now. The set of opened documents
is bounded (:data:`MAX_OPENED`): past it, the watermark moves up to the
oldest of them. Kept in ``HOME/ui/read.json`` by the serving node (0600).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final

from ...node.home import write_private
from .sessions import ui_dir

__all__ = ["ReadMarks", "MAX_OPENED"]

MAX_OPENED: Final = 2000


class ReadMarks:
    def __init__(self, home_path: Path, *, clock: Callable[[], float] = time.time) -> None:
        self.home_path = home_path
        self.clock = clock
        self.path = home_path / "ui" / "read.json"
        self._people: dict[str, dict[str, Any]] = {}
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
            if isinstance(data, dict):
                self._people = {str(k): {"since": float(v["since"]),
                                         "opened": {str(c): float(t) for c, t in v["opened"].items()}}
                                for k, v in data.items()}
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            self._people = {}

    def _person(self, who: str | None) -> dict[str, Any]:
        key = who or ""
        if key not in self._people:
            self._people[key] = {"since": self.clock(), "opened": {}}
            self._save()
        return self._people[key]

    def seen(self, who: str | None) -> None:
        """Start keeping marks for ``who`` now (nothing before counts as news)."""
        self._person(who)

    def unread(self, who: str | None, cid: str, recorded_at: float) -> bool:
        person = self._person(who)
        return recorded_at > person["since"] and cid not in person["opened"]

    def opened(self, who: str | None, cid: str) -> None:
        """``cid`` was opened now (a document recorded before the watermark stays read)."""
        person = self._person(who)
        if cid in person["opened"]:
            return
        person["opened"][cid] = self.clock()
        if len(person["opened"]) > MAX_OPENED:
            oldest = min(person["opened"].values())
            person["since"] = oldest
            person["opened"] = {c: t for c, t in person["opened"].items() if t > oldest}
        self._save()

    def all_read(self, who: str | None) -> None:
        self._people[who or ""] = {"since": self.clock(), "opened": {}}
        self._save()

    def _save(self) -> None:
        ui_dir(self.home_path)
        write_private(self.path, json.dumps(self._people))
