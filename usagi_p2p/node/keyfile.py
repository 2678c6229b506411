"""Key files: an Ed25519 seed at rest, sealed with a passphrase.

One format for every key of a node (docs/operations.md): the node's own
``HOME/identity.key``, the retired keys in ``HOME/keyring/`` and the users'
keys in ``HOME/users/``. The file is JSON so that a person can see what
protects it: argon2id (libsodium ``crypto_pwhash``) derives a key from the
passphrase, and ``crypto_secretbox`` (XSalsa20-Poly1305) seals the seed with
it. A key stored without a passphrase says so in the file::

    {"v": 1, "did": "did:key:z…", "protection": "argon2id+secretbox",
     "opslimit": …, "memlimit": …, "salt": "<hex>", "box": "<hex>"}
    {"v": 1, "did": "did:key:z…", "protection": "none (created with --insecure-no-passphrase)",
     "seed": "<hex>"}

A key file is written once (never over another) and is readable by its
owner only; one open to other users is refused (it may have been copied:
rotate it).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from nacl import pwhash, secret
from nacl.exceptions import CryptoError

from kernel import Identity

from .errors import ConfigError, PassphraseError

__all__ = ["write_key", "read_key", "key_is_protected", "key_did"]


def write_key(path: Path, identity: Identity, passphrase: str | None, *, fast_kdf: bool) -> None:
    """Write ``identity``'s key to a new file ``path`` (0600, synced), sealed with
    ``passphrase`` (None: stored as it is, and marked so). Refuses to overwrite."""
    if passphrase is None:
        record: dict[str, Any] = {
            "v": 1,
            "did": identity.did,
            "protection": "none (created with --insecure-no-passphrase)",
            "seed": identity.seed.hex(),
        }
    else:
        ops = pwhash.argon2id.OPSLIMIT_MIN if fast_kdf else pwhash.argon2id.OPSLIMIT_MODERATE
        mem = pwhash.argon2id.MEMLIMIT_MIN if fast_kdf else pwhash.argon2id.MEMLIMIT_MODERATE
        salt = os.urandom(pwhash.argon2id.SALTBYTES)
        key = pwhash.argon2id.kdf(secret.SecretBox.KEY_SIZE, passphrase.encode(), salt,
                                  opslimit=ops, memlimit=mem)
        box = secret.SecretBox(key).encrypt(identity.seed)
        record = {
            "v": 1,
            "did": identity.did,
            "protection": "argon2id+secretbox",
            "opslimit": ops,
            "memlimit": mem,
            "salt": salt.hex(),
            "box": bytes(box).hex(),
        }
    text = json.dumps(record, indent=2) + "\n"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())


def _record(path: Path) -> dict[str, Any]:
    try:
        record: dict[str, Any] = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read {path}: {exc}") from None
    return record


def key_is_protected(path: Path) -> bool:
    """Whether the key in ``path`` needs a passphrase."""
    return bool(_record(path).get("protection", "").startswith("argon2id"))


def key_did(path: Path) -> str:
    """The DID the key file ``path`` says it holds (no passphrase needed)."""
    did = _record(path).get("did")
    if not isinstance(did, str):
        raise ConfigError(f"{path} is damaged: it names no DID")
    return did


def read_key(path: Path, passphrase: str | None) -> Identity:
    """The identity in the key file ``path``, opened with ``passphrase``.

    Refuses a file open to other users (ConfigError), a missing or wrong
    passphrase (PassphraseError) and a key that does not match its DID."""
    record = _record(path)
    mode = path.stat().st_mode & 0o777
    if mode & 0o077:
        raise ConfigError(f"{path} is readable by others (mode {mode:o}); chmod 600 it")
    if record.get("protection", "").startswith("none"):
        identity = Identity(bytes.fromhex(record["seed"]))
    else:
        if passphrase is None:
            raise PassphraseError("this identity is protected: give the passphrase "
                                  "(prompt or USAGI_PASSPHRASE)")
        key = pwhash.argon2id.kdf(
            secret.SecretBox.KEY_SIZE, passphrase.encode(), bytes.fromhex(record["salt"]),
            opslimit=record["opslimit"], memlimit=record["memlimit"],
        )
        try:
            seed = secret.SecretBox(key).decrypt(bytes.fromhex(record["box"]))
        except CryptoError:
            raise PassphraseError() from None
        identity = Identity(seed)
    if identity.did != record.get("did"):
        raise ConfigError(f"{path} is damaged: the key does not match its DID")
    return identity
