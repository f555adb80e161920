"""Ed25519 key pairs in PEM files, identified by their RFC 7638 JWK thumbprint.

The key id is derived from the public key itself, so a manifest names the key that signed it
without anyone having to assign ids, and two operators can compare ids out of band.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import os
import secrets
import stat
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from edge_mailbox.signer.errors import KeyFileError

log = logging.getLogger(__name__)


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64url_decode(text: str) -> bytes:
    """Decode unpadded base64url strictly: the text must be the canonical encoding.

    Base64 leaves spare bits in the last character; a lenient decoder maps several texts to
    the same bytes, which would make a signed object mutable without breaking its signature.
    """
    if not isinstance(text, str) or any(c in text for c in "=+/ \n\r\t"):
        raise ValueError("not unpadded base64url")
    try:
        data = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (ValueError, TypeError) as exc:
        raise ValueError(f"not base64url: {exc}") from None
    if b64url(data) != text:
        raise ValueError("non-canonical base64url")
    return data


def _raw_public(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def key_id(key: Ed25519PublicKey) -> str:
    """RFC 7638 thumbprint of the key's JWK (SHA-256, base64url), shortened to 22 characters."""
    jwk = json.dumps(
        {"crv": "Ed25519", "kty": "OKP", "x": b64url(_raw_public(key))},
        separators=(",", ":"),
        sort_keys=True,
    )
    return b64url(hashlib.sha256(jwk.encode()).digest())[:22]


@dataclass(frozen=True)
class PublicKey:
    """A trusted (or to-be-trusted) Ed25519 public key."""

    key: Ed25519PublicKey

    @property
    def kid(self) -> str:
        return key_id(self.key)

    def to_pem(self) -> str:
        return self.key.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        ).decode("ascii")

    @classmethod
    def from_pem(cls, pem: str | bytes, source: str = "PEM") -> PublicKey:
        data = pem.encode() if isinstance(pem, str) else pem
        try:
            loaded = serialization.load_pem_public_key(data)
        except ValueError:
            # A private key file is accepted too: its public half is what is trusted.
            return SigningKey.from_pem(data, source).public
        if not isinstance(loaded, Ed25519PublicKey):
            raise KeyFileError(f"{source}: not an Ed25519 public key ({type(loaded).__name__})")
        return cls(loaded)

    @classmethod
    def from_file(cls, path: str | os.PathLike[str]) -> PublicKey:
        return cls.from_pem(_read(path), str(path))


@dataclass(frozen=True)
class SigningKey:
    """An Ed25519 private key: the scheduler's, or one worker's."""

    key: Ed25519PrivateKey

    @classmethod
    def generate(cls) -> SigningKey:
        return cls(Ed25519PrivateKey.generate())

    @property
    def public(self) -> PublicKey:
        return PublicKey(self.key.public_key())

    @property
    def kid(self) -> str:
        return self.public.kid

    def sign(self, data: bytes) -> bytes:
        return self.key.sign(data)

    def seed(self) -> bytes:
        """The 32-byte private seed, for deriving per-job sealing keys (see seal.py)."""
        return self.key.private_bytes(
            serialization.Encoding.Raw,
            serialization.PrivateFormat.Raw,
            serialization.NoEncryption(),
        )

    def to_pem(self) -> str:
        return self.key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ).decode("ascii")

    @classmethod
    def from_pem(cls, pem: str | bytes, source: str = "PEM") -> SigningKey:
        data = pem.encode() if isinstance(pem, str) else pem
        try:
            loaded = serialization.load_pem_private_key(data, password=None)
        except (ValueError, TypeError) as exc:
            raise KeyFileError(f"{source}: not a PEM private key ({exc})") from None
        if not isinstance(loaded, Ed25519PrivateKey):
            raise KeyFileError(f"{source}: not an Ed25519 private key ({type(loaded).__name__})")
        return cls(loaded)

    @classmethod
    def from_file(cls, path: str | os.PathLike[str]) -> SigningKey:
        key = cls.from_pem(_read(path), str(path))
        _warn_if_readable(Path(path))
        return key

    def write(self, path: str | os.PathLike[str], *, overwrite: bool = False) -> Path:
        """Write the private key (mode 0600) and its public half beside it as ``.pub``.

        Never through a symlink, and never by rewriting an existing file in place: with
        ``overwrite`` a new file is renamed over the old one (which keeps neither its mode
        nor its owner; a symlink is replaced, the file it pointed to untouched). Without
        it an existing path, a dangling symlink too, is refused."""
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        _write_file(target, self.to_pem().encode(), 0o600, overwrite=overwrite)
        public = target.with_suffix(target.suffix + ".pub")
        _write_file(public, self.public.to_pem().encode(), 0o644, overwrite=True)
        return target


def _write_file(target: Path, data: bytes, mode: int, *, overwrite: bool) -> None:
    """Without ``overwrite``, create ``target`` itself, only where nothing is. With it, create
    a fresh file beside it and rename that into place, replacing whatever is there (a file,
    or a symlink: the link goes, what it pointed to stays as it was)."""
    if not overwrite:
        _create(target, data, mode)
        return
    temporary = target.with_name(f".{target.name}.{secrets.token_hex(8)}.tmp")
    _create(temporary, data, mode)
    try:
        os.replace(temporary, target)
    except OSError as exc:
        os.unlink(temporary)
        raise KeyFileError(f"{target}: cannot write key file ({exc.strerror})") from None


def _create(path: Path, data: bytes, mode: int) -> None:
    """A new file holding ``data`` with exactly ``mode`` from its first byte: O_EXCL |
    O_NOFOLLOW, so never an existing file and never through a symlink, dangling or not."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        fd = os.open(path, flags, mode)
    except FileExistsError:
        raise KeyFileError(f"{path}: exists; refusing to overwrite a key (--force)") from None
    except OSError as exc:
        raise KeyFileError(f"{path}: cannot write key file ({exc.strerror})") from None
    try:
        os.fchmod(fd, mode)  # exactly ``mode``: the umask may have narrowed it
        os.write(fd, data)
        os.fsync(fd)
    except OSError as exc:
        os.unlink(path)
        raise KeyFileError(f"{path}: cannot write key file ({exc.strerror})") from None
    finally:
        os.close(fd)


def _warn_if_readable(path: Path) -> None:
    """A private key that group or others may read (or write) is as good as shared."""
    try:
        mode = stat.S_IMODE(path.stat().st_mode)
    except OSError:
        return  # read a moment ago: a file that vanished since has nothing to warn about
    if mode & 0o077:
        log.warning(
            "edge-mailbox: private key %s is accessible by group or others (mode %o); "
            "restrict it: chmod 600 %s",
            path,
            mode,
            path,
        )


def _read(path: str | os.PathLike[str]) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise KeyFileError(f"{path}: cannot read key file ({exc.strerror})") from None


class KeyRing:
    """The set of public keys trusted to sign one kind of object, looked up by key id.

    Rotation is a matter of trusting the old and the new key at once for a while.
    """

    def __init__(self, keys: Iterable[PublicKey] = ()) -> None:
        self._keys: dict[str, PublicKey] = {k.kid: k for k in keys}

    @classmethod
    def from_files(cls, paths: Iterable[str | os.PathLike[str]]) -> KeyRing:
        return cls(PublicKey.from_file(p) for p in paths)

    @classmethod
    def from_spec(cls, spec: str) -> KeyRing:
        """The keys a setting names: comma-separated key files and folders of ``.pub`` files.
        Raises KeyFileError for a file that is missing or not a key."""
        ring = cls()
        for item in (p.strip() for p in spec.split(",")):
            if not item:
                continue
            folder = Path(item)
            for path in sorted(folder.glob("*.pub")) if folder.is_dir() else [folder]:
                ring.add(PublicKey.from_file(path))
        return ring

    def add(self, key: PublicKey) -> None:
        self._keys[key.kid] = key

    def replace_with(self, other: KeyRing) -> tuple[set[str], set[str]]:
        """Trust exactly ``other``'s keys from now on; returns (added, removed) key ids."""
        added, removed = set(other._keys) - set(self._keys), set(self._keys) - set(other._keys)
        self._keys = dict(other._keys)
        return added, removed

    def get(self, kid: str) -> PublicKey | None:
        return self._keys.get(kid)

    def __contains__(self, kid: object) -> bool:
        return kid in self._keys

    def __len__(self) -> int:
        return len(self._keys)

    def kids(self) -> Mapping[str, PublicKey]:
        return dict(self._keys)
