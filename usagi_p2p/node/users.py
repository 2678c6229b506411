"""Users of a node: employees with their own keys, plugin subsets and approval roles.

Implements docs/plugins.md ("Per company, per user" and "The approval route").

Each user has an Ed25519 key in ``HOME/users/<name>.key``, stored exactly
like the node's identity key (argon2id + secretbox with a passphrase, or
marked unprotected, mode 0600): :mod:`usagi_p2p.node.keyfile`, the same,
single implementation, writes and reads both. The user's entry in
``config.users`` records its DID, its plugin subset and its role in approval
routes::

    "users": {"suzuki": {"did": "did:key:z…", "plugins": ["medical"], "role": "pharmacist"}}

Moving a user to other plugins changes that entry and nothing else: documents
already sent keep the plugin fields they had.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from .errors import ConfigError
from .home import Config, Home
from .plugin_host import PluginHost

if TYPE_CHECKING:
    from kernel import Identity

__all__ = ["add_user", "load_user", "move_user", "remove_user", "approve",
           "approver", "user_key_path", "user_key_is_protected"]

_NAME_RE: Final = re.compile(r"[a-z0-9][a-z0-9._-]{0,39}")


def user_key_path(home: Home, name: str) -> Path:
    if not _NAME_RE.fullmatch(name):
        raise ConfigError(f"a user name is 1..40 of a-z 0-9 . _ - (got {name!r})")
    return home.path / "users" / f"{name}.key"


def add_user(home: Home, name: str, passphrase: str | None, *, plugins: Sequence[str] | None = None,
             role: str | None = None, fast_kdf: bool = False,
             seed: bytes | None = None) -> Identity:
    """Create a user's key and config entry; refuses to overwrite an existing user."""
    from kernel import Identity

    from . import keyfile  # nacl: loaded by what reads or writes a key

    path = user_key_path(home, name)
    identity = Identity(seed) if seed is not None else Identity.generate()
    entry: dict[str, Any] = {"did": identity.did}
    if plugins is not None:
        entry["plugins"] = list(plugins)
    if role:
        entry["role"] = role

    def add(config: Config) -> None:
        if name in config.users or path.exists():
            raise ConfigError(f"user {name!r} already exists")
        path.parent.mkdir(mode=0o700, exist_ok=True)
        keyfile.write_key(path, identity, passphrase, fast_kdf=fast_kdf)
        config.users[name] = entry

    home.update_config(add)
    return identity


def load_user(home: Home, name: str, passphrase: str | None) -> Identity:
    """A user's identity, checked against the DID the config records for it."""
    from . import keyfile  # nacl: loaded by what reads or writes a key

    config = home.load_config()
    if name not in config.users:
        raise ConfigError(f"no user {name!r} (see 'usagi user list')")
    identity = keyfile.read_key(_existing_key(home, name), passphrase)
    if identity.did != config.users[name].get("did"):
        raise ConfigError(f"the key of user {name!r} does not match its DID in the config")
    return identity


def user_key_is_protected(home: Home, name: str) -> bool:
    from . import keyfile  # nacl: loaded by what reads or writes a key

    return keyfile.key_is_protected(_existing_key(home, name))


def _existing_key(home: Home, name: str) -> Path:
    home.make_private()
    path = user_key_path(home, name)
    if not path.exists():
        raise ConfigError(f"no key file for user {name!r} ({path})")
    return path


def move_user(home: Home, name: str, plugins: Sequence[str] | None) -> Config:
    """Assign ``name`` another plugin subset (None: every enabled plugin). No migration."""
    def move(config: Config) -> Config:
        if name not in config.users:
            raise ConfigError(f"no user {name!r} (see 'usagi user list')")
        if plugins is None:
            config.users[name].pop("plugins", None)
        else:
            config.users[name]["plugins"] = list(plugins)
        return config

    return home.update_config(move)


def remove_user(home: Home, name: str) -> None:
    """Forget a user; the key file is kept (renamed) because past approvals name its DID."""
    def remove(config: Config) -> None:
        if config.users.pop(name, None) is None:
            raise ConfigError(f"no user {name!r}")

    home.update_config(remove)
    path = user_key_path(home, name)
    if path.exists():
        path.rename(path.with_suffix(".key.removed"))


def approve(home: Home, document: dict[str, Any], name: str, passphrase: str | None,
            role: str | None = None) -> dict[str, Any]:
    """``document`` with an approval by user ``name`` appended (role from the config by default).

    The document must be complete (``from``, ``to``, ``issued_at`` set): the
    approval covers every field but the approvals, so anything changed after
    approving invalidates it. The approval is made by the plugin that approves
    documents of its kind (the optional plugin hook ``approve``,
    docs/plugins.md; ``PluginHost.approving``).
    """
    config = home.load_config()
    identity = load_user(home, name, passphrase)
    role = role or config.users[name].get("role")
    if not role:
        raise ConfigError(f"user {name!r} has no approval role; give --role or set one "
                          "with 'usagi user add --role'")
    return PluginHost.for_config(config).approve(document, identity, role)


def approver(home: Home, users: Sequence[tuple[str, str | None]]
             ) -> Callable[[dict[str, Any]], dict[str, Any]]:
    """A function that adds an approval by each of ``users`` (name, passphrase) to a
    built document, for ``Node.send_many(prepare=...)``.

    Keys are unlocked now, so a missing or wrong passphrase fails before
    anything is sealed; roles come from ``config.users[name]["role"]``.
    """
    config = home.load_config()
    host = PluginHost.for_config(config)
    signers: list[tuple[Identity, str]] = []
    for name, passphrase in users:
        identity = load_user(home, name, passphrase)
        role = config.users[name].get("role")
        if not role:
            raise ConfigError(f"user {name} has no approval role "
                              "(usagi user add NAME --role ROLE)")
        signers.append((identity, role))

    def sign_all(document: dict[str, Any]) -> dict[str, Any]:
        # Every approval signs the document without approvals, so the order
        # of signing does not matter and each covers the same bytes.
        for identity, role in signers:
            document = host.approve(document, identity, role)
        return document

    return sign_all
