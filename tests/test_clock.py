"""The clock is injected everywhere (issue 15): no module reads the wall clock itself.

Time is a parameter in the kernel (DESIGN.md) and ``Node.clock`` in the node,
so tests can move it and every part of a node agrees on "now". Reading the
wall clock is allowed only as the default value of a clock parameter
(``clock: Callable[[], float] = time.time``) or in :data:`ALLOWED`, each with
its reason. ``time.monotonic`` (deadlines, rate limits) measures durations,
not dates, and is not matched.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Final

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("kernel", "usagi_p2p", "ipfs", "plugins")

#: A read of the wall clock (or an import that hides one behind a bare name).
WALL_CLOCK: Final = re.compile(
    r"\btime\.time(?:_ns)?\b|\bdatetime\.(?:now|utcnow|today)\(|\bdate\.today\("
    r"|\bfrom time import\b.*\btime(?:_ns)?\b")
#: ``time.time`` named, not called, as a parameter's default value.
DEFAULT_CLOCK: Final = re.compile(r"=\s*time\.time\s*[,)]")

#: "path:line text" fragments allowed to read the clock, with why. Empty today:
#: add a row only with a reason a reviewer accepts.
ALLOWED: Final[dict[tuple[str, str], str]] = {}


def clock_reads(text: str) -> list[str]:
    """The lines of ``text`` that read the wall clock other than as a default clock."""
    found = []
    for line in text.splitlines():
        code = line.split("#", 1)[0]
        if WALL_CLOCK.search(code) and not DEFAULT_CLOCK.search(code):
            found.append(line.strip())
    return found


def test_the_pattern_finds_reads_and_passes_defaults() -> None:
    reads = ["now = time.time()", "t = time.time_ns()", "datetime.now(UTC)",
             "datetime.utcnow()", "date.today()", "from time import time",
             "f = time.time", "created=time.time() if now is None else now"]
    for line in reads:
        assert clock_reads(line) == [line], line
    for line in ("clock: Callable[[], float] = time.time,", "def f(clock=time.time):",
                 "deadline = time.monotonic() + 5", "datetime.fromtimestamp(self.clock(), UTC)",
                 "# time.time() in a comment"):
        assert clock_reads(line) == [], line


def test_no_module_reads_the_wall_clock_itself() -> None:
    offenders: list[str] = []
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            rel = path.relative_to(ROOT).as_posix()
            for line in clock_reads(path.read_text(encoding="utf-8")):
                if not any(rel == p and fragment in line for p, fragment in ALLOWED):
                    offenders.append(f"{rel}: {line}")
    assert offenders == [], ("read the node's clock (node.now(), node.clock) or take a "
                             "clock parameter:\n" + "\n".join(offenders))
