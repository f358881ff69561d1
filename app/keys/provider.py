"""Key providers: where the root of the envelope scheme comes from.

The envelope scheme has three layers. A *master key* (versioned, held here) wraps one
key-encryption key per member; each member's KEK wraps one data key per report version (those two
layers are stored in the database by the members and reports domains). Rotating the master key adds
a version here; re-wrapping the member KEKs under it never touches report ciphertexts.

Domain code wraps and unwraps through `KeyProvider.wrap` / `KeyProvider.unwrap`, not through
`master_key`. That is the extension point for an external KMS: a `KmsKeyProvider` implements this
protocol, overrides `wrap`/`unwrap` with the KMS's Encrypt/Decrypt calls (passing `aad` as the
encryption context), and makes `master_key` raise, so the master key never leaves the KMS. The
blind-index key and the signing keys are used for every request, so a KMS provider would typically
keep them as data keys unwrapped by the KMS once at start-up.

Two providers ship here: `LocalKeyring` (a JSON file with mode 0600, the embedded default) and
`EnvKeyProvider` (variables injected by the deployment's secret store).
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import dataclasses
import fcntl
import hashlib
import json
import os
import secrets
import stat
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from app.kit import crypto
from app.kit.crypto import SecretBytes

KEYRING_FILENAME = "keyring.json"
KEYRING_FORMAT = 1
# A keyring is a few kilobytes; anything far larger is not a keyring and is not read into memory.
_MAX_KEYRING_BYTES = 1 << 20

ENV_MASTER_KEYS = "TEARLINE_MASTER_KEYS"
ENV_INDEX_KEY = "TEARLINE_INDEX_KEY"
ENV_SIGNING_KEYS = "TEARLINE_SIGNING_KEYS"


class KeyringError(Exception):
    """Key material is missing, malformed or stored unsafely; the message never holds key bytes."""


class UnknownKeyVersion(KeyError):
    """The requested master key version is not held by this provider."""

    def __init__(self, version: int) -> None:
        super().__init__(version)
        self.version = version

    def __str__(self) -> str:
        return f"unknown master key version {self.version}"


class KeyProvider(Protocol):
    """Source of the master keys (versioned), the blind-index key and the service signing keys."""

    @property
    def is_development(self) -> bool:
        """True for throw-away keys made for local development; never for EnvKeyProvider."""
        ...

    def current_master_version(self) -> int:
        """Version new wraps must use (the highest one held)."""
        ...

    def master_key(self, version: int) -> SecretBytes:
        """Return master key `version`; raise UnknownKeyVersion if it is not held."""
        ...

    def held_master_versions(self) -> list[int]:
        """Every master key version held (for `tearline keys status`)."""
        ...

    def index_key(self) -> SecretBytes:
        """Return the key used only to derive blind-index keys, never to encrypt."""
        ...

    def service_signing_keys(self) -> list[tuple[str, str]]:
        """Return (kid, PKCS#8 PEM of an ES256 private key) pairs, the current key first."""
        ...

    def signing_entries(self) -> list[SigningEntry]:
        """Every signing key with its schedule (see SigningEntry), newest first."""
        ...

    def wrap(self, version: int, key: SecretBytes, aad: bytes) -> bytes:
        """Wrap `key` under master key `version`, bound to `aad`."""
        return crypto.wrap_key(self.master_key(version), key, aad)

    def unwrap(self, version: int, blob: bytes, aad: bytes) -> SecretBytes:
        """Unwrap a key wrapped by `wrap`; raise CorruptionError if blob or aad do not match."""
        return crypto.unwrap_key(self.master_key(version), blob, aad)


@dataclass(frozen=True)
class SigningEntry:
    """A service signing key as the provider holds it.

    `activates_at`: the key is published (JWKS) from the moment it is added, but signs only from
    this time on (None: since it was added). `private_pem` is None once the key is retired: its
    public half stays published, so checkpoints it signed can still be verified.
    """

    kid: str
    public_pem: str
    private_pem: str | None = field(default=None, repr=False)
    activates_at: datetime | None = None
    retired_at: datetime | None = None


@dataclass(frozen=True, slots=True, repr=False)  # repr=False: the fields are secrets
class _Material:
    development: bool
    master_keys: Mapping[int, SecretBytes]
    index_key: SecretBytes
    # Newest first; retired keys (public half only) after the others.
    signing: tuple[SigningEntry, ...]

    @property
    def signing_keys(self) -> tuple[tuple[str, str], ...]:
        return tuple((e.kid, e.private_pem) for e in self.signing if e.private_pem is not None)

    def with_master_key(self, version: int, key: SecretBytes) -> _Material:
        return dataclasses.replace(self, master_keys={**self.master_keys, version: key})

    def with_index_key(self, key: SecretBytes) -> _Material:
        return dataclasses.replace(self, index_key=key)

    def with_signing_key(self, entry: SigningEntry) -> _Material:
        return dataclasses.replace(self, signing=(entry, *self.signing))


class _MaterialView:
    """KeyProvider accessors shared by the providers, over an immutable _Material snapshot."""

    _material: _Material

    @property
    def is_development(self) -> bool:
        """True for throw-away keys made for local development."""
        return self._material.development

    def current_master_version(self) -> int:
        """Version new wraps must use (the highest one held)."""
        return max(self._material.master_keys)

    def master_key(self, version: int) -> SecretBytes:
        """Return master key `version`; raise UnknownKeyVersion if it is not held."""
        try:
            return self._material.master_keys[version]
        except KeyError:
            raise UnknownKeyVersion(version) from None

    def index_key(self) -> SecretBytes:
        """Return the key used only to derive blind-index keys."""
        return self._material.index_key

    def service_signing_keys(self) -> list[tuple[str, str]]:
        """Return (kid, PKCS#8 PEM) pairs, the current key first."""
        return list(self._material.signing_keys)

    def signing_entries(self) -> list[SigningEntry]:
        """Every signing key, newest first, with its schedule; retired ones last."""
        return list(self._material.signing)

    def held_master_versions(self) -> list[int]:
        """The master key versions held."""
        return sorted(self._material.master_keys)


# --- key material helpers -------------------------------------------------------------------


def _b64encode(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii")


def _b64url(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def _decode_key(value: object, fail: _Fail, what: str) -> SecretBytes:
    if not isinstance(value, str):
        raise fail(f"{what} is not a base64 string")
    try:
        raw = base64.b64decode(value.strip(), validate=True)
    except (binascii.Error, ValueError):
        # from None here and below: a chained decoder exception may carry key text along.
        raise fail(f"{what} is not valid base64") from None
    if len(raw) != crypto.KEY_SIZE:
        raise fail(f"{what} must decode to {crypto.KEY_SIZE} bytes, got {len(raw)}")
    return SecretBytes(raw)


def _check_signing_pem(pem: object, fail: _Fail, what: str) -> str:
    if not isinstance(pem, str):
        raise fail(f"{what} is not a PEM string")
    try:
        key = serialization.load_pem_private_key(pem.encode("ascii"), password=None)
    except (ValueError, TypeError, UnicodeEncodeError):
        raise fail(f"{what} is not an unencrypted PKCS#8 PEM private key") from None
    # ES256 is the only algorithm the token wrapper accepts; anything else is a misconfiguration.
    if not isinstance(key, ec.EllipticCurvePrivateKey) or not isinstance(key.curve, ec.SECP256R1):
        raise fail(f"{what} is not an EC P-256 (ES256) private key")
    return pem


def _jwk_thumbprint(key: ec.EllipticCurvePrivateKey) -> str:
    """RFC 7638 thumbprint of the public key, so the kid is stable and derivable by anyone."""
    numbers = key.public_key().public_numbers()
    jwk = {
        "crv": "P-256",
        "kty": "EC",
        "x": _b64url(numbers.x.to_bytes(32, "big")),
        "y": _b64url(numbers.y.to_bytes(32, "big")),
    }
    canonical = json.dumps(jwk, separators=(",", ":"), sort_keys=True).encode("ascii")
    return _b64url(hashlib.sha256(canonical).digest())


def _new_signing_key() -> tuple[str, str]:
    key = ec.generate_private_key(ec.SECP256R1())
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode("ascii")
    return _jwk_thumbprint(key), pem


def _public_pem(private_pem: str) -> str:
    key = serialization.load_pem_private_key(private_pem.encode("ascii"), password=None)
    return (
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode("ascii")
    )


def _signing_entry(
    kid: str, private_pem: str, activates_at: datetime | None = None
) -> SigningEntry:
    return SigningEntry(kid, _public_pem(private_pem), private_pem, activates_at)


def _check_distinct(material: _Material, fail: _Fail) -> None:
    # The index key must be separate from every encryption key (spec: blind indexes use their own
    # key); a copy-paste that reuses one would silently weaken both.
    if any(material.index_key == key for key in material.master_keys.values()):
        raise fail("the index key must differ from every master key")
    kids = [e.kid for e in material.signing]
    if len(set(kids)) != len(kids):
        raise fail("signing key ids must be unique")


class _Fail(Protocol):
    def __call__(self, reason: str) -> KeyringError: ...


# --- local keyring file ---------------------------------------------------------------------


class LocalKeyring(_MaterialView, KeyProvider):
    """Keys in `<directory>/keyring.json`, mode 0600, written atomically."""

    def __init__(self, path: Path, material: _Material, *, strict: bool) -> None:
        """Use LocalKeyring.create or LocalKeyring.load instead."""
        self._path = path
        self._material = material
        self._strict = strict
        self._read_mtime = _mtime(path)

    def __repr__(self) -> str:
        return f"LocalKeyring(path={str(self._path)!r}, development={self.is_development})"

    @property
    def path(self) -> Path:
        """Path of the keyring file."""
        return self._path

    @classmethod
    def create(
        cls, directory: Path, development: bool, *, require_strict_permissions: bool = True
    ) -> LocalKeyring:
        """Create the keyring in directory with fresh keys, or load the one already there."""
        directory = Path(directory)
        path = directory / KEYRING_FILENAME
        if not path.exists():
            # 0700: the directory listing itself is nobody else's business.
            directory.mkdir(mode=0o700, parents=True, exist_ok=True)
            kid, pem = _new_signing_key()
            material = _Material(
                development=development,
                master_keys={1: crypto.new_key()},
                index_key=crypto.new_key(),
                signing=(_signing_entry(kid, pem),),
            )
            if _write_atomically(path, _serialise(material), overwrite=False):
                return cls(path, material, strict=require_strict_permissions)
            # Lost a race with another process creating it: fall through and use theirs.
        keyring = cls.load(directory, require_strict_permissions=require_strict_permissions)
        if keyring.is_development != development:
            # Silently using development keys in production (or the reverse) must not happen.
            kind = "development" if keyring.is_development else "production"
            raise KeyringError(f"keyring {path}: existing keyring is marked {kind}")
        return keyring

    @classmethod
    def load(cls, directory: Path, require_strict_permissions: bool) -> LocalKeyring:
        """Load `<directory>/keyring.json`; raise KeyringError if missing, unsafe or invalid."""
        path = Path(directory) / KEYRING_FILENAME
        material = _read(path, strict=require_strict_permissions)
        return cls(path, material, strict=require_strict_permissions)

    def reload(self) -> None:
        """Re-read the file, e.g. after `tearline keys rotate` ran in another process."""
        mtime = _mtime(self._path)
        self._material = _read(self._path, strict=self._strict)
        self._read_mtime = mtime

    def master_key(self, version: int) -> SecretBytes:
        """Return master key `version`, re-reading the file if it is newer than any held."""
        if version > self.current_master_version():
            # Another process (`tearline keys rotate`) may have added it; rows already wrapped
            # under it must stay readable here without a restart.
            self.reload()
        return super().master_key(version)

    def rotate_master(self) -> int:
        """Add a new master key version, persist it, and return the new (now current) version."""
        # Start from the file, not memory, so a rotation done elsewhere is not overwritten.
        with _exclusive(self._path):
            self.reload()
            version = self.current_master_version() + 1
            self._persist(self._material.with_master_key(version, crypto.new_key()))
            return version

    def remove_master(self, version: int) -> None:
        """Delete master key `version` from the file (never the current one). The caller checks
        first that no member key is wrapped by it any more: what it wraps would be lost."""
        with _exclusive(self._path):
            self.reload()
            if version == self.current_master_version():
                raise KeyringError(f"keyring {self._path}: master key {version} is the current one")
            if version not in self._material.master_keys:
                raise KeyringError(f"keyring {self._path}: no master key version {version}")
            kept = {v: k for v, k in self._material.master_keys.items() if v != version}
            self._persist(dataclasses.replace(self._material, master_keys=kept))

    def rotate_index_key(self, key: SecretBytes | None = None) -> None:
        """Replace the blind-index key (by `key`, or a fresh one) and persist it. The index must
        then be rebuilt (`tearline search reindex`): rows of the old key are no longer found."""
        with _exclusive(self._path):
            self.reload()
            material = self._material.with_index_key(key or crypto.new_key())
            _check_distinct(
                material, lambda reason: KeyringError(f"keyring {self._path}: {reason}")
            )
            self._persist(material)

    @staticmethod
    def new_signing_key() -> tuple[str, str]:
        """A fresh ES256 key: (kid, PKCS#8 PEM), for `add_signing_key`."""
        return _new_signing_key()

    def add_signing_key(
        self, activates_at: datetime | None = None, key: tuple[str, str] | None = None
    ) -> str:
        """Add a new ES256 signing key (`key`, or a fresh one), persist it, and return its kid.
        It is published at once and signs from `activates_at` on (None: at once)."""
        with _exclusive(self._path):
            self.reload()
            kid, pem = key or _new_signing_key()
            self._persist(self._material.with_signing_key(_signing_entry(kid, pem, activates_at)))
            return kid

    def retire_signing_key(self, kid: str, at: datetime) -> None:
        """Delete the private half of signing key `kid`; its public half stays published."""
        with _exclusive(self._path):
            self.reload()
            entries = list(self._material.signing)
            found = [e for e in entries if e.kid == kid and e.private_pem is not None]
            if not found:
                raise KeyringError(f"keyring {self._path}: no usable signing key {kid}")
            if len([e for e in entries if e.private_pem is not None]) == 1:
                raise KeyringError(f"keyring {self._path}: {kid} is the only signing key")
            retired = SigningEntry(kid, found[0].public_pem, None, found[0].activates_at, at)
            kept = tuple(e for e in entries if e.kid != kid)
            self._persist(dataclasses.replace(self._material, signing=(*kept, retired)))

    def changed_on_disk(self) -> bool:
        """Whether the file was replaced since it was last read (cheap: one stat)."""
        return _mtime(self._path) not in ((0, 0, 0), self._read_mtime)

    def _persist(self, material: _Material) -> None:
        _write_atomically(self._path, _serialise(material), overwrite=True)
        self._material = material
        self._read_mtime = _mtime(self._path)


def _mtime(path: Path) -> tuple[int, int, int]:
    """What identifies one version of the file: a replaced file has a new inode."""
    try:
        info = os.stat(path)
    except OSError:
        return (0, 0, 0)
    return (info.st_ino, info.st_mtime_ns, info.st_size)


@contextlib.contextmanager
def _exclusive(path: Path) -> Iterator[None]:
    """One change to the keyring at a time, across processes (an advisory lock beside it):
    two rotations at once must not write over each other's new key."""
    fd = os.open(path.with_name(f".{path.name}.lock"), os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _serialise(material: _Material) -> bytes:
    document = {
        "format": KEYRING_FORMAT,
        "development": material.development,
        "master_keys": {
            str(version): _b64encode(key.reveal())
            for version, key in sorted(material.master_keys.items())
        },
        "index_key": _b64encode(material.index_key.reveal()),
        "signing_keys": [_serialise_signing(e) for e in material.signing],
    }
    return json.dumps(document, indent=2).encode("utf-8") + b"\n"


def _serialise_signing(entry: SigningEntry) -> dict[str, str]:
    if entry.private_pem is None:
        retired = entry.retired_at.isoformat() if entry.retired_at is not None else ""
        return {"kid": entry.kid, "public_key_pem": entry.public_pem, "retired_at": retired}
    out = {"kid": entry.kid, "private_key_pem": entry.private_pem}
    if entry.activates_at is not None:
        out["activates_at"] = entry.activates_at.isoformat()
    return out


def _write_atomically(path: Path, data: bytes, *, overwrite: bool) -> bool:
    """Write data to path via a 0600 temp file; return False if not overwriting and path exists."""
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(8)}.tmp")
    # Created 0600 from the first byte (umask can only narrow it), so no window where the keys
    # sit in a world-readable file.
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        try:
            os.fchmod(fd, 0o600)
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        if overwrite:
            os.replace(tmp, path)
        else:
            # link() fails if path exists, where replace() would clobber keys another process
            # has just created and possibly already used.
            try:
                os.link(tmp, path)
            except FileExistsError:
                return False
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
    _fsync_directory(path.parent)
    return True


def _fsync_directory(directory: Path) -> None:
    # Without this, a crash right after rename can lose the new directory entry (and a rotation).
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _read(path: Path, *, strict: bool) -> _Material:
    def fail(reason: str) -> KeyringError:
        return KeyringError(f"keyring {path}: {reason}")

    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        raise fail("file not found") from None
    except OSError as exc:
        raise fail(f"cannot open ({exc.strerror})") from None
    try:
        # fstat on the open descriptor: the checked file is the file that is read.
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise fail("not a regular file")
        if strict and info.st_mode & 0o077:
            raise fail(
                f"permissions {stat.filemode(info.st_mode)} let group or others access it; "
                f"run `chmod 600 {path}`"
            )
        if info.st_size > _MAX_KEYRING_BYTES:
            raise fail("file is too large to be a keyring")
        with os.fdopen(fd, "rb", closefd=False) as handle:
            raw = handle.read(_MAX_KEYRING_BYTES + 1)
    finally:
        os.close(fd)
    return _parse(raw, fail)


def _parse(raw: bytes, fail: _Fail) -> _Material:
    try:
        document: Any = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError):
        # from None: JSONDecodeError keeps the whole document (keys included) in `.doc`.
        raise fail("not valid JSON") from None
    if not isinstance(document, dict):
        raise fail("top level must be a JSON object")
    if document.get("format") != KEYRING_FORMAT:
        raise fail(f"unsupported format (expected {KEYRING_FORMAT})")
    development = document.get("development")
    if not isinstance(development, bool):
        raise fail('"development" must be true or false')

    entries = document.get("master_keys")
    if not isinstance(entries, dict) or not entries:
        raise fail('"master_keys" must be a non-empty object')
    master_keys: dict[int, SecretBytes] = {}
    for name, value in entries.items():
        if not (isinstance(name, str) and name.isascii() and name.isdigit() and int(name) > 0):
            raise fail('"master_keys" versions must be positive integers')
        master_keys[int(name)] = _decode_key(value, fail, f"master key version {int(name)}")
    if len(master_keys) != len(entries):
        raise fail('"master_keys" has duplicate versions')

    index_key = _decode_key(document.get("index_key"), fail, '"index_key"')

    signing_entries = document.get("signing_keys")
    if not isinstance(signing_entries, list) or not signing_entries:
        raise fail('"signing_keys" must be a non-empty list')
    signing = tuple(
        _parse_signing(entry, position, fail) for position, entry in enumerate(signing_entries)
    )
    if not any(e.private_pem is not None for e in signing):
        raise fail('"signing_keys" holds no key that can sign')

    material = _Material(development, master_keys, index_key, signing)
    _check_distinct(material, fail)
    return material


def _instant(value: object, fail: _Fail, what: str) -> datetime:
    if not isinstance(value, str):
        raise fail(f"{what} must be an ISO 8601 time")
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise fail(f"{what} must be an ISO 8601 time") from None
    if parsed.tzinfo is None:
        raise fail(f"{what} must carry its time zone")
    return parsed.astimezone(UTC)


def _parse_signing(entry: object, position: int, fail: _Fail) -> SigningEntry:
    what = f"signing key #{position}"
    if not isinstance(entry, dict):
        raise fail(f"{what} must be an object")
    kid = entry.get("kid")
    if not isinstance(kid, str) or not kid:
        raise fail(f"{what} has no kid")
    if "private_key_pem" not in entry and "public_key_pem" in entry:
        # Retired: only the public half is kept, to verify what it signed.
        public = entry["public_key_pem"]
        try:
            loaded = serialization.load_pem_public_key(str(public).encode("ascii"))
        except (ValueError, TypeError, UnicodeEncodeError):
            raise fail(f"{what} has no valid public key") from None
        if not isinstance(loaded, ec.EllipticCurvePublicKey):
            raise fail(f"{what} is not an EC P-256 public key")
        return SigningEntry(
            kid, str(public), None, None, _instant(entry.get("retired_at"), fail, what)
        )
    pem = _check_signing_pem(entry.get("private_key_pem"), fail, what)
    activates = entry.get("activates_at")
    return _signing_entry(
        kid, pem, _instant(activates, fail, what) if activates is not None else None
    )


# --- environment ----------------------------------------------------------------------------


class EnvKeyProvider(_MaterialView, KeyProvider):
    """Keys from environment variables, as injected by a deployment's secret store.

    TEARLINE_MASTER_KEYS  = "1:<base64 32 bytes>,2:<base64 32 bytes>"  (current = highest)
    TEARLINE_INDEX_KEY    = "<base64 32 bytes>"
    TEARLINE_SIGNING_KEYS = "<kid>=<base64 of PKCS#8 PEM>,..."          (current first)
    """

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        """Parse and validate all variables now, so a bad deployment fails at start-up."""
        env = os.environ if environ is None else environ
        master_keys = _parse_env_master_keys(_require(env, ENV_MASTER_KEYS))
        index_key = _decode_key(_require(env, ENV_INDEX_KEY), _env_fail(ENV_INDEX_KEY), "value")
        signing_keys = _parse_env_signing_keys(_require(env, ENV_SIGNING_KEYS))
        # Never development: keys that arrive through the environment belong to a real deployment.
        signing = tuple(_signing_entry(kid, pem) for kid, pem in signing_keys)
        material = _Material(False, master_keys, index_key, signing)
        _check_distinct(material, _env_fail(f"{ENV_INDEX_KEY}/{ENV_SIGNING_KEYS}"))
        self._material = material

    def __repr__(self) -> str:
        return f"EnvKeyProvider(master_versions={sorted(self._material.master_keys)})"


def _env_fail(variable: str) -> _Fail:
    def fail(reason: str) -> KeyringError:
        return KeyringError(f"environment variable {variable}: {reason}")

    return fail


def _require(env: Mapping[str, str], variable: str) -> str:
    value = env.get(variable, "").strip()
    if not value:
        raise _env_fail(variable)("is not set")
    return value


def _parse_env_master_keys(value: str) -> dict[int, SecretBytes]:
    fail = _env_fail(ENV_MASTER_KEYS)
    keys: dict[int, SecretBytes] = {}
    for position, item in enumerate(value.split(",")):
        version_text, separator, encoded = item.strip().partition(":")
        version_text = version_text.strip()
        if not separator or not (version_text.isascii() and version_text.isdigit()):
            raise fail(f"entry #{position} must look like '<version>:<base64>'")
        version = int(version_text)
        if version < 1:
            raise fail(f"entry #{position}: versions start at 1")
        if version in keys:
            raise fail(f"version {version} appears twice")
        keys[version] = _decode_key(encoded, fail, f"version {version}")
    return keys


def _parse_env_signing_keys(value: str) -> tuple[tuple[str, str], ...]:
    fail = _env_fail(ENV_SIGNING_KEYS)
    keys: list[tuple[str, str]] = []
    for position, item in enumerate(value.split(",")):
        # Split at the first "=": kids never contain one, base64 padding may.
        kid, separator, encoded = item.strip().partition("=")
        kid = kid.strip()
        if not separator or not kid:
            raise fail(f"entry #{position} must look like '<kid>=<base64 PEM>'")
        try:
            pem = base64.b64decode(encoded.strip(), validate=True).decode("ascii")
        except (binascii.Error, ValueError):
            raise fail(f"key {kid!r} is not base64 of a PEM text") from None
        keys.append((kid, _check_signing_pem(pem, fail, f"key {kid!r}")))
    return tuple(keys)
