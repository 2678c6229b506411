"""A real IPFS daemon for tests and CI: offline, loopback-only (docs/operations.md).

    python3 tools/ipfs-daemon/daemon.py install        # js-ipfs into the cache (idempotent)
    python3 tools/ipfs-daemon/daemon.py start [--repo DIR] [--json]   # prints the RPC URL
    python3 tools/ipfs-daemon/daemon.py stop [--repo DIR] [--keep]
    python3 tools/ipfs-daemon/daemon.py status [--repo DIR]

Prefers a Kubo binary (``ipfs`` on PATH that reports Kubo), started with
``--offline``; otherwise js-ipfs 0.66.1 from the npm registry, installed with
``npm ci`` from the lock file beside this script into ``$USAGI_IPFS_CACHE``
(default ``~/.cache/usagi-p2p/jsipfs``), outside the repository.

Safety (DESIGN.md, "Safety rule for anything IPFS"): every repo gets the
loopback config (empty Bootstrap, MDNS off, no swarm listeners, API and gateway
on 127.0.0.1 on free ports, routing none), ``check_config.py`` must pass before
the daemon starts, the daemon runs ``--offline`` with ``NODE_ENV=test`` and
preload off, and once up every socket it holds must be on 127.0.0.1 or it is
killed. Standard library only.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from check_config import check_repo  # noqa: E402

LOCK_FILES = ("package.json", "package-lock.json")
STAMP = ".usagi-lock-sha256"
STATE = "usagi-daemon.json"
START_TIMEOUT = 60.0


class DaemonError(Exception):
    """Install or start failed; the message says why (and carries the log tail)."""


def cache_dir() -> Path:
    env = os.environ.get("USAGI_IPFS_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "usagi-p2p" / "jsipfs"


def _lock_hash() -> str:
    digest = hashlib.sha256()
    for name in LOCK_FILES:
        digest.update((HERE / name).read_bytes())
    return digest.hexdigest()


def _js_cli(cache: Path) -> Path:
    return cache / "node_modules" / "ipfs" / "src" / "cli.js"


def install(cache: Path | None = None, *, quiet: bool = False) -> Path:
    """npm ci js-ipfs into ``cache`` unless the same lock file is installed there already."""
    cache = cache or cache_dir()
    wanted = _lock_hash()
    stamp = cache / STAMP
    if stamp.is_file() and stamp.read_text().strip() == wanted and _js_cli(cache).is_file():
        if not quiet:
            print(f"js-ipfs already installed in {cache}")
        return cache
    npm = shutil.which("npm")
    if not npm or not shutil.which("node"):
        raise DaemonError("js-ipfs needs node and npm (Debian: apt-get install nodejs npm)")
    cache.mkdir(parents=True, exist_ok=True)
    import fcntl  # POSIX only, like the rest of this recipe.

    # Two test sessions may install at once; the second waits and then finds the stamp.
    with open(cache / ".install.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if stamp.is_file() and stamp.read_text().strip() == wanted and _js_cli(cache).is_file():
            return cache
        stamp.unlink(missing_ok=True)
        for name in LOCK_FILES:
            shutil.copyfile(HERE / name, cache / name)
        started = time.monotonic()
        # --omit=optional skips a package whose install script downloads a binary.
        proc = subprocess.run(
            [npm, "ci", "--omit=optional", "--no-audit", "--no-fund"],
            cwd=cache, capture_output=True, text=True, check=False,
            env={**os.environ, "NO_UPDATE_NOTIFIER": "1"},
        )
        if proc.returncode != 0 or not _js_cli(cache).is_file():
            tail = "\n".join((proc.stdout + proc.stderr).splitlines()[-30:])
            raise DaemonError(f"npm ci in {cache} failed (exit {proc.returncode}):\n{tail}")
        stamp.write_text(wanted + "\n")
    if not quiet:
        print(f"js-ipfs installed in {cache} in {time.monotonic() - started:.1f} s")
    return cache


def find_kubo() -> str | None:
    """An ``ipfs`` on PATH that is Kubo (go-ipfs), not js-ipfs; None if there is none."""
    exe = shutil.which("ipfs")
    if not exe:
        return None
    try:
        out = subprocess.run([exe, "version", "--all"], capture_output=True, text=True,
                             timeout=20, check=False).stdout.lower()
    except (OSError, subprocess.TimeoutExpired):
        return None
    return exe if ("kubo" in out or "go-ipfs" in out) else None


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def loopback_config(impl: str, api_port: int, gateway_port: int) -> dict[str, Any]:
    config: dict[str, Any] = json.loads((HERE / "loopback-config.json").read_text())
    config["Addresses"]["API"] = f"/ip4/127.0.0.1/tcp/{api_port}"
    config["Addresses"]["Gateway"] = f"/ip4/127.0.0.1/tcp/{gateway_port}"
    if impl == "kubo":
        # js-ipfs-only keys would only confuse Kubo; Kubo has its own outward paths to shut.
        for key in ("RPC", "Delegates"):
            config["Addresses"].pop(key)
        config["Discovery"].pop("webRTCStar")
        config["AutoConf"] = {"Enabled": False}
        config["AutoNAT"] = {"ServiceMode": "disabled"}
        config["Plugins"] = {"Plugins": {"telemetry": {"Config": {"Mode": "off"}}}}
    return config


def _merge(into: dict[str, Any], overlay: dict[str, Any]) -> None:
    for key, value in overlay.items():
        if isinstance(value, dict) and isinstance(into.get(key), dict):
            _merge(into[key], value)
        else:
            into[key] = value


def _env(repo: Path) -> dict[str, str]:
    # NODE_ENV=test: js-ipfs otherwise announces added CIDs to a public preload service.
    return {**os.environ, "IPFS_PATH": str(repo), "NODE_ENV": "test", "NO_UPDATE_NOTIFIER": "1",
            "IPFS_TELEMETRY": "off", "DO_NOT_TRACK": "1"}


def _run(cmd: list[str], repo: Path) -> None:
    proc = subprocess.run(cmd, env=_env(repo), capture_output=True, text=True, timeout=120,
                          check=False)
    if proc.returncode != 0:
        raise DaemonError(f"{' '.join(cmd)} failed:\n{proc.stdout}{proc.stderr}")


def init_repo(repo: Path, impl: str, cmd: list[str]) -> str:
    """Create the repo with the loopback config, check it; return the API URL."""
    api_port, gateway_port = free_port(), free_port()
    overlay = loopback_config(impl, api_port, gateway_port)
    if impl == "js":
        # js-ipfs merges a config file given to init into its defaults.
        cfg = repo.parent / f"{repo.name}.init-config.json"
        cfg.write_text(json.dumps(overlay))
        try:
            _run([*cmd, "init", "--profile", "test", "--empty-repo", str(cfg)], repo)
        finally:
            cfg.unlink(missing_ok=True)
    else:
        _run([*cmd, "init", "--profile", "test", "--empty-repo"], repo)
    # Apply the overlay ourselves as well: the file on disk is what the checker reads.
    config = json.loads((repo / "config").read_text())
    _merge(config, overlay)
    (repo / "config").write_text(json.dumps(config, indent=2))
    ok, report = check_repo(repo, impl)
    if not ok:
        raise DaemonError(f"refusing to start: the config of {repo} could dial out:\n{report}")
    return f"http://127.0.0.1:{api_port}"


def _api_up(url: str) -> bool:
    req = urllib.request.Request(f"{url}/api/v0/id", method="POST")
    try:
        with urllib.request.urlopen(req, timeout=2) as resp:  # noqa: S310 - loopback URL we built
            return resp.status == 200 and b'"ID"' in resp.read()
    except (OSError, urllib.error.URLError):
        return False


def _socket_inodes(pid: int) -> set[str]:
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        with contextlib.suppress(OSError):
            target = os.readlink(fd)
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
    return inodes


def foreign_sockets(pid: int) -> list[str]:
    """Sockets of ``pid`` bound or connected anywhere but loopback (Linux /proc)."""
    if not Path("/proc/net/tcp").exists():
        return []
    inodes = _socket_inodes(pid)
    loopback4, loopback6 = "0100007F", "00000000000000000000000001000000"
    bad = []
    for table in ("tcp", "tcp6", "udp", "udp6"):
        path = Path("/proc/net") / table
        if not path.exists():
            continue
        for line in path.read_text().splitlines()[1:]:
            fields = line.split()
            local, remote, inode = fields[1], fields[2], fields[9]
            if inode not in inodes:
                continue
            for end, addr in (("local", local), ("remote", remote)):
                host = addr.split(":")[0]
                unset = set(host) == {"0"} and end == "remote"
                if host not in (loopback4, loopback6) and not unset:
                    bad.append(f"{table} {end} {addr}")
    return bad


def _log_tail(repo: Path, lines: int = 40) -> str:
    log = repo / "daemon.log"
    return "\n".join(log.read_text(errors="replace").splitlines()[-lines:]) if log.exists() else ""


def start(repo: Path | None = None, cache: Path | None = None) -> dict[str, Any]:
    """Init a repo, start the daemon, wait for its API; return the state written to the repo."""
    kubo = find_kubo()
    if kubo:
        impl, cmd = "kubo", [kubo]
    else:
        cli = _js_cli(install(cache, quiet=True))
        impl, cmd = "js", [shutil.which("node") or "node", str(cli)]
    temp = repo is None
    repo = Path(tempfile.mkdtemp(prefix="usagi-ipfs-")) if repo is None else repo.resolve()
    repo.mkdir(parents=True, exist_ok=True)
    url = init_repo(repo, impl, cmd)
    args = [*cmd, "daemon", "--offline"] + (["--enable-preload=false"] if impl == "js" else [])
    started = time.monotonic()
    with open(repo / "daemon.log", "wb") as log:
        proc = subprocess.Popen(args, env=_env(repo), stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)
    state = {"api": url, "pid": proc.pid, "repo": str(repo), "impl": impl, "temp": temp,
             "log": str(repo / "daemon.log")}
    (repo / STATE).write_text(json.dumps(state))
    while not _api_up(url):
        if proc.poll() is not None:
            raise DaemonError(f"{impl} daemon exited with {proc.returncode}:\n{_log_tail(repo)}")
        if time.monotonic() - started > START_TIMEOUT:
            # js-ipfs can hang rather than exit after a fatal libp2p error.
            stop(repo, keep=True)
            raise DaemonError(f"{impl} API not up after {START_TIMEOUT:.0f} s:\n{_log_tail(repo)}")
        time.sleep(0.2)
    state["start_seconds"] = round(time.monotonic() - started, 2)
    bad = foreign_sockets(proc.pid)
    if bad:
        stop(repo, keep=True)
        raise DaemonError(f"killed the daemon: non-loopback sockets {bad}")
    (repo / STATE).write_text(json.dumps(state))
    if temp:
        (cache or cache_dir()).mkdir(parents=True, exist_ok=True)
        ((cache or cache_dir()) / "last-daemon").write_text(str(repo))
    return state


def _resolve_repo(repo: Path | None, cache: Path | None) -> Path:
    if repo is not None:
        return repo
    last = (cache or cache_dir()) / "last-daemon"
    if not last.is_file():
        raise DaemonError("no --repo given and no daemon started by `daemon.py start` on record")
    return Path(last.read_text().strip())


def stop(repo: Path, *, keep: bool = False) -> str:
    """SIGTERM (then SIGKILL) the daemon recorded in ``repo``; remove a temp repo."""
    state_file = repo / STATE
    if not state_file.is_file():
        return f"no daemon recorded in {repo}"
    state = json.loads(state_file.read_text())
    pid = int(state["pid"])
    alive = _is_our_daemon(pid, repo)
    if alive:
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and _alive(pid):
            time.sleep(0.1)
        if _alive(pid):
            os.kill(pid, signal.SIGKILL)
    state_file.unlink(missing_ok=True)
    if state.get("temp") and not keep:
        shutil.rmtree(repo, ignore_errors=True)
    return f"stopped {state['impl']} pid {pid}" if alive else f"pid {pid} was not running"


def _is_our_daemon(pid: int, repo: Path) -> bool:
    """Whether ``pid`` still is the daemon of ``repo`` (not a reused pid).

    js-ipfs renames its process to ``ipfs``, so the command line does not tell;
    the environment it was started with still names the repo.
    """
    try:
        environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except OSError:
        return False
    return f"IPFS_PATH={repo}".encode() in environ and _alive(pid)


def _alive(pid: int) -> bool:
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)  # reap it if it is our child
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.split(")")[-1].split()[0] != "Z"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name in ("install", "start", "stop", "status"):
        p = sub.add_parser(name)
        p.add_argument("--cache", type=Path, default=None, help="js-ipfs install dir")
        if name != "install":
            p.add_argument("--repo", type=Path, default=None, help="IPFS_PATH (default: temp)")
        if name == "start":
            p.add_argument("--json", action="store_true", help="print the state as JSON")
        if name == "stop":
            p.add_argument("--keep", action="store_true", help="keep a temp repo")
    args = parser.parse_args(argv)
    try:
        if args.command == "install":
            install(args.cache)
        elif args.command == "start":
            state = start(args.repo, args.cache)
            print(json.dumps(state) if args.json else state["api"])
        elif args.command == "stop":
            print(stop(_resolve_repo(args.repo, args.cache), keep=args.keep))
        else:
            repo = _resolve_repo(args.repo, args.cache)
            state = json.loads((repo / STATE).read_text())
            up = _api_up(state["api"])
            print(f"{state['impl']} pid {state['pid']} {state['api']} {'up' if up else 'DOWN'}")
            return 0 if up else 1
    except (DaemonError, OSError, subprocess.TimeoutExpired) as exc:
        print(f"daemon.py {args.command}: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
