"""(being built)"""

from __future__ import annotations

from typing import Any, Final

__all__ = ["ROUTES"]

ROUTES: Final[list[Any]] = []
