"""Refuse an IPFS repo config that could make the daemon dial anything but 127.0.0.1.

The project's safety rule (DESIGN.md, "Safety rule for anything IPFS"): a
daemon started by a test, a benchmark or a demo is offline or loopback-only.
This checker reads ``$IPFS_PATH/config`` (js-ipfs or Kubo; both are JSON with
the same key names where they overlap) and lists one OK/FAIL line per rule.

    python3 tools/ipfs-daemon/check_config.py REPO [--impl js|kubo]

Exit 0 when every rule holds, 1 otherwise. Standard library only: a fresh
machine has python3 but maybe not ``jq``. ``daemon.py`` imports ``check``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

LOOPBACK_PREFIXES = ("/ip4/127.0.0.1/", "/ip6/::1/")


def _get(config: dict[str, Any], dotted: str, default: Any = None) -> Any:
    value: Any = config
    for part in dotted.split("."):
        if not isinstance(value, dict) or part not in value:
            return default
        value = value[part]
    return value


def _addrs(value: Any) -> list[str]:
    # API and Gateway may be one multiaddr string or a list of them; "" means off.
    if value in (None, ""):
        return []
    if isinstance(value, str):
        return [value]
    if isinstance(value, list):
        return [str(v) for v in value]
    return [repr(value)]


def _loopback_only(value: Any) -> bool:
    return all(addr.startswith(LOOPBACK_PREFIXES) for addr in _addrs(value))


def check(config: dict[str, Any], impl: str = "js") -> list[tuple[str, bool]]:
    """Each rule's description and whether ``config`` keeps it."""
    rules = [
        ("Bootstrap is empty", not _get(config, "Bootstrap", [])),
        ("Discovery.MDNS.Enabled is false", _get(config, "Discovery.MDNS.Enabled") is False),
        ("Swarm.DisableNatPortMap is true", _get(config, "Swarm.DisableNatPortMap") is True),
        (
            "Addresses.Swarm empty or loopback-only",
            _loopback_only(_get(config, "Addresses.Swarm", [])),
        ),
        ("Addresses.API on loopback", _loopback_only(_get(config, "Addresses.API"))),
        ("Addresses.Gateway on loopback or off", _loopback_only(_get(config, "Addresses.Gateway"))),
        ("Addresses.Announce is empty", not _get(config, "Addresses.Announce", [])),
        ("Addresses.AppendAnnounce is empty", not _get(config, "Addresses.AppendAnnounce", [])),
        ("Routing.Type is none", _get(config, "Routing.Type") == "none"),
    ]
    if impl == "js":
        # js-ipfs defaults these to on when the keys are missing, so they must be present.
        rules += [
            ("Addresses.Delegates is empty", not _get(config, "Addresses.Delegates", [])),
            (
                "Discovery.webRTCStar.Enabled is false",
                _get(config, "Discovery.webRTCStar.Enabled") is False,
            ),
            ("Addresses.RPC (gRPC) loopback or off", _loopback_only(_get(config, "Addresses.RPC"))),
        ]
    else:
        # Kubo >= 0.37 fetches network defaults from a URL unless AutoConf is off.
        rules += [("AutoConf.Enabled is false", _get(config, "AutoConf.Enabled") is False)]
    return rules


def check_repo(repo: Path, impl: str = "js") -> tuple[bool, str]:
    """(all rules hold, a printable report) for the repo at ``repo``."""
    config = json.loads((repo / "config").read_text(encoding="utf-8"))
    results = check(config, impl)
    lines = [f"{'OK  ' if ok else 'FAIL'} {name}" for name, ok in results]
    return all(ok for _, ok in results), "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("repo", type=Path, help="the IPFS_PATH whose config to check")
    parser.add_argument("--impl", choices=("js", "kubo"), default="js")
    args = parser.parse_args(argv)
    ok, report = check_repo(args.repo, args.impl)
    print(report)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
