"""A node's home folder: identity key at rest, configuration, databases.

Layout (docs/operations.md)::

    HOME/identity.key   the Ed25519 seed, sealed with a passphrase (mode 0600)
    HOME/config.json    name, endpoint, listen address, store, plugins, users
    HOME/ledger.db      documents, acks, partners, outbox, nonces (SQLite, WAL)
    HOME/blocks.db      the embedded block store (unless a Kubo URL is configured)

The home holds every document in plaintext (the ledger), so it is private
(docs/spec.md §12, "Files at rest"): the folder is 0700 and every file the
node writes 0600, whatever the umask and however the folder came to exist
(``mkdir ~/usagi``, systemd's ``StateDirectory=`` make it 0755). Opening a
home makes a folder or data file that is open to other users private again,
with a warning line for each; a key file open to others is refused instead
(it may have been copied: rotate it).

The key files (this node's, the retired ones in ``HOME/keyring/``) are
written and read by :mod:`usagi_p2p.node.keyfile`, the one implementation of
their format, which the users' keys share. A key stored without a passphrase
says so in the file and on every start.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import secrets
import stat
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, TypeVar

from .errors import ConfigError

if TYPE_CHECKING:  # the key files (nacl, argon2id) are loaded by what reads or writes a key
    from kernel import Identity

__all__ = ["Home", "Config", "default_home", "write_private"]

log = logging.getLogger("usagi.home")

T = TypeVar("T")

KEY_FILE: Final = "identity.key"
CONFIG_FILE: Final = "config.json"
#: Held (flock) by whoever changes config.json: serve and every CLI command.
CONFIG_LOCK: Final = "config.lock"
#: Files of a home besides the keys; made 0600 on open when a home is older
#: than that rule (SQLite's -wal, -shm and -journal files included).
DATA_FILES: Final = tuple(
    [f"{db}{suffix}" for db in ("ledger.db", "blocks.db") for suffix in ("", "-wal", "-shm",
                                                                          "-journal")]
    + [CONFIG_FILE, CONFIG_LOCK, "config.tmp", "local.token", "serve.json", "api-tokens.json",
       "api-tokens-used.json"])
#: Folders of a home besides itself (retired keys, users' keys).
DATA_DIRS: Final = ("keyring", "users")


def write_private(path: Path, text: str) -> None:
    """Write ``text`` to ``path``, readable by its owner only (0600) whatever the
    umask, through a temporary file renamed over it: a reader finds the old file
    or the new one, never a part (``serve.json`` is read as soon as it exists)."""
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def default_home() -> Path:
    env = os.environ.get("USAGI_HOME")
    if env:
        return Path(env)
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "usagi-p2p"


@dataclass
class Config:
    name: str
    did: str
    listen_host: str = "127.0.0.1"
    listen_port: int = 8470
    endpoint: str = "http://127.0.0.1:8470"
    kubo_url: str | None = None
    plugins: list[str] = field(default_factory=list)
    #: Per plugin, the keyword arguments its constructor takes (docs/plugins.md, "Settings").
    plugin_settings: dict[str, dict[str, Any]] = field(default_factory=dict)
    users: dict[str, dict[str, Any]] = field(default_factory=dict)
    push_blocks: bool = True
    max_attempts: int = 8
    retry_base: float = 0.5
    retry_cap: float = 300.0
    #: Partner endpoints on private, loopback or link-local addresses: True allows them,
    #: False refuses them, unset (None) follows this node's own endpoint (docs/spec.md 10).
    allow_private_endpoints: bool | None = None
    #: What one partner may store here per quota period: documents, and bytes
    #: (each document's ciphertext block plus its opened signed document). The
    #: defaults sit far above a busy partner's day (docs/spec.md section 12, "Quotas").
    quota_docs: int = 100_000
    quota_bytes: int = 1 << 30
    #: Seconds in one quota period: fixed windows from the Unix epoch (a UTC day).
    quota_period: int = 86_400
    #: Per partner DID, {"docs": N, "bytes": N} in place of the defaults ('usagi partner quota').
    partner_quotas: dict[str, dict[str, int]] = field(default_factory=dict)
    #: The local API, for the company's own systems (docs/api.md): loopback by
    #: default. ``local_port`` None: 8471, or any free port when that one is taken;
    #: a number: exactly that port (0: any); with ``local_socket`` set and no
    #: port, the Unix socket only (a relative path is inside the home).
    local_host: str = "127.0.0.1"
    local_port: int | None = None
    local_socket: str | None = None
    #: The largest upload the local API takes (an archive to verify), in bytes.
    local_upload_max: int = 1 << 30
    #: The event sequence (docs/spec.md section 11.6) keeps events this many days,
    #: and at most ``events_keep`` of the newest; ``usagi serve`` prunes hourly.
    events_keep_days: int = 90
    events_keep: int = 1_000_000
    #: Where each event is POSTed, signed (docs/api.md, "Webhooks"): each
    #: {"url": ..., "secret": "whsec_...", "types": [...]} ('usagi webhook add').
    webhooks: list[dict[str, Any]] = field(default_factory=list)
    #: This company on paper (docs/formats.md, "Parties"): name, tax_id, address,
    #: city, postal_code, country, endpoint, contact. A UBL export takes from it
    #: what a document's own ``parties`` lack ('usagi profile').
    profile: dict[str, str] = field(default_factory=dict)
    #: The same for each partner, by DID ('usagi profile --partner NAME').
    partner_profiles: dict[str, dict[str, str]] = field(default_factory=dict)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Config:
        known = {f for f in cls.__dataclass_fields__}
        unknown = set(data) - known
        if unknown:
            raise ConfigError(f"unknown config fields: {sorted(unknown)}")
        settings = data.get("plugin_settings", {})
        if not isinstance(settings, dict) or not all(
                isinstance(k, str) and isinstance(v, dict) for k, v in settings.items()):
            raise ConfigError("plugin_settings must map each plugin name to an object of "
                              "settings, e.g. {\"food\": {\"freshness_days\": 3}}")
        try:
            config = cls(**data)
        except TypeError as exc:
            raise ConfigError(f"invalid config: {exc}") from None
        config.check_quotas()
        if type(config.local_upload_max) is not int or config.local_upload_max < 0:
            raise ConfigError("local_upload_max must be a whole number of bytes >= 0")
        return config

    def check_quotas(self) -> None:
        """Refuse quota settings that are not whole numbers of the right sign."""
        def count(value: Any) -> bool:
            return type(value) is int and value >= 0

        if not (count(self.quota_docs) and count(self.quota_bytes)):
            raise ConfigError("quota_docs and quota_bytes must be whole numbers >= 0")
        if not (count(self.quota_period) and self.quota_period > 0):
            raise ConfigError("quota_period must be a whole number of seconds > 0")
        quotas = self.partner_quotas
        if not isinstance(quotas, dict) or not all(
                isinstance(did, str) and isinstance(q, dict) and q and set(q) <= {"docs", "bytes"}
                and all(count(v) for v in q.values()) for did, q in quotas.items()):
            raise ConfigError("partner_quotas must map each partner DID to "
                              "{\"docs\": N, \"bytes\": N} (either or both, whole numbers >= 0)")


class Home:
    """The files of one node."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path).expanduser()

    @property
    def ledger_path(self) -> Path:
        return self.path / "ledger.db"

    @property
    def blocks_path(self) -> Path:
        return self.path / "blocks.db"

    @property
    def key_path(self) -> Path:
        return self.path / KEY_FILE

    @property
    def keyring_path(self) -> Path:
        """Retired keys, kept to open the node's own history (rotation)."""
        return self.path / "keyring"

    @property
    def config_path(self) -> Path:
        return self.path / CONFIG_FILE

    def exists(self) -> bool:
        return self.key_path.exists() and self.config_path.exists()

    # -- creation ---------------------------------------------------------

    def create(
        self,
        name: str,
        passphrase: str | None,
        *,
        seed: bytes | None = None,
        endpoint: str | None = None,
        port: int = 8470,
        host: str = "127.0.0.1",
        fast_kdf: bool = False,
    ) -> Identity:
        """Create the folder, a new identity and the config. Refuses to overwrite."""
        from kernel import Identity

        from . import keyfile
        if self.key_path.exists():
            raise ConfigError(f"{self.path} already holds an identity; refusing to overwrite it")
        self.path.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.make_private()
        identity = Identity(seed) if seed is not None else Identity.generate()
        keyfile.write_key(self.key_path, identity, passphrase, fast_kdf=fast_kdf)
        config = Config(
            name=name,
            did=identity.did,
            listen_host=host,
            listen_port=port,
            endpoint=endpoint or f"http://{host}:{port}",
        )
        self.save_config(config)
        return identity

    # -- loading ----------------------------------------------------------

    def make_private(self) -> None:
        """Close the home to other users: the folder and its folders 0700, its
        data files 0600; a warning line for each that was open. Raises
        ConfigError when that cannot be done (the folder belongs to another
        user). Key files are not touched: :meth:`load_identity` refuses one
        that is open to others."""
        targets = [(self.path, 0o700)]
        targets += [(self.path / name, 0o700) for name in DATA_DIRS]
        targets += [(self.path / name, 0o600) for name in DATA_FILES]
        for path, private in targets:
            try:
                mode = stat.S_IMODE(path.stat().st_mode)  # a symlink: its target
            except FileNotFoundError:
                continue
            except OSError as exc:
                raise ConfigError(f"cannot read the mode of {path}: {exc}") from None
            if not mode & 0o077:
                continue
            try:
                path.chmod(private)
            except OSError as exc:
                raise ConfigError(f"{path} is open to other users (mode {mode:o}) and cannot "
                                  f"be made private ({exc}); chmod {private:o} it") from None
            log.warning("%s was open to other users (mode %o); made it %o", path, mode, private)

    def key_is_protected(self) -> bool:
        from . import keyfile
        self._key_present()
        return keyfile.key_is_protected(self.key_path)

    def _key_present(self) -> None:
        self.make_private()
        if not self.key_path.exists():
            raise ConfigError(f"no identity in {self.path}: run 'usagi init' first")

    def load_identity(self, passphrase: str | None) -> Identity:
        from . import keyfile
        self._key_present()
        return keyfile.read_key(self.key_path, passphrase)

    def load_keyring(self, passphrase: str | None) -> list[Identity]:
        """Every retired key, newest first."""
        from . import keyfile
        if not self.keyring_path.is_dir():
            return []
        files = sorted(self.keyring_path.glob("*.key"), key=lambda p: p.stat().st_mtime,
                       reverse=True)
        return [keyfile.read_key(path, passphrase) for path in files]

    def rotate_key(self, new: Identity, passphrase: str | None, *, fast_kdf: bool = False) -> None:
        """Make ``new`` this node's key; keep the old one in the keyring.

        Order matters for a crash: the new key file is complete on disk before
        the old one moves, and the config names the new DID last.
        """
        from . import keyfile
        self._key_present()
        old_did = keyfile.key_did(self.key_path)
        staged = self.path / (KEY_FILE + ".new")
        staged.unlink(missing_ok=True)
        keyfile.write_key(staged, new, passphrase, fast_kdf=fast_kdf)
        self.keyring_path.mkdir(mode=0o700, exist_ok=True)
        os.replace(self.key_path, self.keyring_path / (old_did.rsplit(":", 1)[-1] + ".key"))
        os.replace(staged, self.key_path)

        def renamed(config: Config) -> None:
            config.did = new.did

        self.update_config(renamed)

    def load_config(self) -> Config:
        self.make_private()
        if not self.config_path.exists():
            raise ConfigError(f"no config in {self.path}: run 'usagi init' first")
        try:
            return Config.from_json(json.loads(self.config_path.read_text()))
        except ValueError as exc:
            raise ConfigError(f"cannot read {self.config_path}: {exc}") from None

    def update_config(self, change: Callable[[Config], T]) -> T:
        """Change config.json: ``change`` edits the config as it is on disk now, and
        what it made is written; returns what ``change`` returns.

        Several processes change the file (a running ``serve`` through the
        operations, CLI commands in others): an exclusive lock on
        ``HOME/config.lock`` makes each read-modify-write whole, so none loses
        another's change. Nothing is written when ``change`` raises.
        """
        with _locked(self.path / CONFIG_LOCK):
            config = self.load_config()
            result = change(config)
            self._write_config(config)
            return result

    def save_config(self, config: Config) -> None:
        """Write ``config`` as the whole of config.json (under the lock). To change
        a part of it, :meth:`update_config`: this overwrites what others wrote
        since ``config`` was read."""
        with _locked(self.path / CONFIG_LOCK):
            self._write_config(config)

    def _write_config(self, config: Config) -> None:
        """Replace config.json at once: a reader sees the old file or the new one,
        never a part; the new one is on disk (file and folder synced) on return."""
        text = json.dumps(asdict(config), indent=2, ensure_ascii=False) + "\n"
        fd, tmp = tempfile.mkstemp(prefix=".config.", suffix=".tmp", dir=self.path)  # 0600
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                handle.write(text)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, self.config_path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        folder = os.open(self.path, os.O_RDONLY)
        try:
            os.fsync(folder)
        finally:
            os.close(folder)


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    """An exclusive ``flock`` on ``path`` (made 0600) for the time of a ``with``."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock

