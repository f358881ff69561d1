import base64
import json
import os
import stat
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from app.keys.provider import (
    KEYRING_FILENAME,
    EnvKeyProvider,
    KeyProvider,
    KeyringError,
    LocalKeyring,
    UnknownKeyVersion,
)
from app.kit import crypto
from app.kit.crypto import CorruptionError, SecretBytes

AAD = crypto.associated_data("member_keys", "ITA", 1)


def b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii")


def pem_of(key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey) -> str:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode("ascii")


def mode_of(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def open_umask() -> Iterator[None]:
    # A permissive umask must not widen the keyring's mode.
    previous = os.umask(0)
    try:
        yield
    finally:
        os.umask(previous)


@pytest.fixture
def keyring(tmp_path: Path) -> LocalKeyring:
    return LocalKeyring.create(tmp_path / "keys", development=False)


class TestLocalKeyringCreate:
    def test_creates_keys_of_the_right_kinds(self, keyring: LocalKeyring) -> None:
        assert keyring.current_master_version() == 1
        assert len(keyring.master_key(1)) == crypto.KEY_SIZE
        assert len(keyring.index_key()) == crypto.KEY_SIZE
        assert keyring.index_key() != keyring.master_key(1)
        assert keyring.is_development is False
        [(kid, pem)] = keyring.service_signing_keys()
        key = serialization.load_pem_private_key(pem.encode(), password=None)
        assert isinstance(key, ec.EllipticCurvePrivateKey)
        assert isinstance(key.curve, ec.SECP256R1)
        assert len(kid) == 43  # base64url SHA-256 thumbprint

    def test_marks_development_keyrings(self, tmp_path: Path) -> None:
        assert LocalKeyring.create(tmp_path, development=True).is_development is True

    @pytest.mark.usefixtures("open_umask")
    def test_file_is_0600_and_directory_0700(self, tmp_path: Path) -> None:
        keyring = LocalKeyring.create(tmp_path / "keys", development=False)
        assert keyring.path == tmp_path / "keys" / KEYRING_FILENAME
        assert mode_of(keyring.path) == 0o600
        assert mode_of(tmp_path / "keys") == 0o700

    def test_is_idempotent(self, keyring: LocalKeyring) -> None:
        before = keyring.path.read_bytes()
        again = LocalKeyring.create(keyring.path.parent, development=False)
        assert keyring.path.read_bytes() == before
        assert again.master_key(1) == keyring.master_key(1)
        assert again.service_signing_keys() == keyring.service_signing_keys()

    def test_leaves_no_temporary_files(self, keyring: LocalKeyring) -> None:
        keyring.rotate_master()
        # The keyring, and the empty file its writers lock (mode 0600) so that two changes
        # never write over each other.
        names = sorted(p.name for p in keyring.path.parent.iterdir())
        assert names == [f".{KEYRING_FILENAME}.lock", KEYRING_FILENAME]
        lock = keyring.path.parent / f".{KEYRING_FILENAME}.lock"
        assert lock.stat().st_size == 0
        assert lock.stat().st_mode & 0o077 == 0

    def test_refuses_existing_keyring_of_the_other_kind(self, tmp_path: Path) -> None:
        LocalKeyring.create(tmp_path, development=True)
        with pytest.raises(KeyringError, match="marked development"):
            LocalKeyring.create(tmp_path, development=False)

    def test_losing_a_creation_race_uses_the_winners_keys(
        self, keyring: LocalKeyring, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        # Simulate another process creating the file between our check and our write.
        monkeypatch.setattr(Path, "exists", lambda self: False)
        loser = LocalKeyring.create(keyring.path.parent, development=False)
        assert loser.master_key(1) == keyring.master_key(1)

    def test_repr_shows_no_keys(self, keyring: LocalKeyring) -> None:
        text = repr(keyring)
        assert b64(keyring.master_key(1).reveal()) not in text
        assert "PRIVATE KEY" not in text


class TestLocalKeyringLoad:
    def test_loads_what_create_wrote(self, keyring: LocalKeyring) -> None:
        loaded = LocalKeyring.load(keyring.path.parent, require_strict_permissions=True)
        assert loaded.master_key(1) == keyring.master_key(1)
        assert loaded.index_key() == keyring.index_key()
        assert loaded.service_signing_keys() == keyring.service_signing_keys()

    @pytest.mark.parametrize("mode", [0o640, 0o604, 0o660, 0o644, 0o666, 0o610])
    def test_loose_permissions_are_refused_when_strict(
        self, keyring: LocalKeyring, mode: int
    ) -> None:
        keyring.path.chmod(mode)
        with pytest.raises(KeyringError) as caught:
            LocalKeyring.load(keyring.path.parent, require_strict_permissions=True)
        assert str(keyring.path) in str(caught.value)
        assert "chmod 600" in str(caught.value)

    def test_loose_permissions_are_accepted_when_not_strict(self, keyring: LocalKeyring) -> None:
        keyring.path.chmod(0o644)
        loaded = LocalKeyring.load(keyring.path.parent, require_strict_permissions=False)
        assert loaded.master_key(1) == keyring.master_key(1)

    def test_owner_only_read_is_accepted(self, keyring: LocalKeyring) -> None:
        keyring.path.chmod(0o400)
        LocalKeyring.load(keyring.path.parent, require_strict_permissions=True)

    def test_missing_file_is_refused(self, tmp_path: Path) -> None:
        with pytest.raises(KeyringError, match="not found") as caught:
            LocalKeyring.load(tmp_path, require_strict_permissions=True)
        assert str(tmp_path / KEYRING_FILENAME) in str(caught.value)

    def test_directory_in_place_of_file_is_refused(self, tmp_path: Path) -> None:
        (tmp_path / KEYRING_FILENAME).mkdir(mode=0o700)
        with pytest.raises(KeyringError, match="regular file"):
            LocalKeyring.load(tmp_path, require_strict_permissions=True)


def _set(key: str, value: Any) -> Callable[[dict[str, Any]], None]:
    def mutate(document: dict[str, Any]) -> None:
        document[key] = value

    return mutate


def _delete(key: str) -> Callable[[dict[str, Any]], None]:
    def mutate(document: dict[str, Any]) -> None:
        del document[key]

    return mutate


def _master(name: str, value: Any) -> Callable[[dict[str, Any]], None]:
    def mutate(document: dict[str, Any]) -> None:
        document["master_keys"][name] = value

    return mutate


def _signing(field: str, value: Any) -> Callable[[dict[str, Any]], None]:
    def mutate(document: dict[str, Any]) -> None:
        document["signing_keys"][0][field] = value

    return mutate


def _index_equals_master(document: dict[str, Any]) -> None:
    document["index_key"] = document["master_keys"]["1"]


def _duplicate_kid(document: dict[str, Any]) -> None:
    document["signing_keys"].append(dict(document["signing_keys"][0]))


RSA_PEM = pem_of(rsa.generate_private_key(public_exponent=65537, key_size=2048))
P384_PEM = pem_of(ec.generate_private_key(ec.SECP384R1()))

MALFORMATIONS = {
    "wrong-format": _set("format", 2),
    "development-not-bool": _set("development", "yes"),
    "no-master-keys": _delete("master_keys"),
    "empty-master-keys": _set("master_keys", {}),
    "master-key-short": _master("1", b64(b"k" * 16)),
    "master-key-long": _master("2", b64(b"k" * 33)),
    "master-key-not-base64": _master("1", "not base64!!"),
    "master-key-not-string": _master("1", 12345),
    "version-zero": _master("0", b64(b"k" * 32)),
    "version-not-number": _master("v2", b64(b"k" * 32)),
    "duplicate-version": _master("01", b64(b"z" * 32)),
    "index-key-missing": _delete("index_key"),
    "index-key-short": _set("index_key", b64(b"i" * 31)),
    "index-key-is-master-key": _index_equals_master,
    "no-signing-keys": _set("signing_keys", []),
    "signing-entry-not-object": _set("signing_keys", ["kid"]),
    "signing-key-without-kid": _signing("kid", ""),
    "signing-key-garbage": _signing("private_key_pem", "-----BEGIN PRIVATE KEY-----\nxx"),
    "signing-key-rsa": _signing("private_key_pem", RSA_PEM),
    "signing-key-p384": _signing("private_key_pem", P384_PEM),
    "duplicate-kid": _duplicate_kid,
}


class TestLocalKeyringMalformed:
    @pytest.mark.parametrize("mutate", MALFORMATIONS.values(), ids=MALFORMATIONS.keys())
    def test_malformed_keyring_is_refused_without_leaking_keys(
        self, keyring: LocalKeyring, mutate: Callable[[dict[str, Any]], None]
    ) -> None:
        document = json.loads(keyring.path.read_text())
        secrets = [*document["master_keys"].values(), document["index_key"]]
        mutate(document)
        secrets += [v for v in document.get("master_keys", {}).values() if isinstance(v, str)]
        keyring.path.write_text(json.dumps(document))
        with pytest.raises(KeyringError) as caught:
            LocalKeyring.load(keyring.path.parent, require_strict_permissions=True)
        message = str(caught.value)
        assert str(keyring.path) in message
        for secret in secrets:
            assert secret not in message
        assert "PRIVATE KEY" not in message

    @pytest.mark.parametrize(
        "content",
        [b"", b"{", b"[]", b'"text"', b"\xff\xfe", b'{"master_keys": {"1": "c2VjcmV0c2Vj'],
        ids=["empty", "unclosed", "list", "string", "not-utf8", "truncated"],
    )
    def test_non_keyring_content_is_refused(self, tmp_path: Path, content: bytes) -> None:
        path = tmp_path / KEYRING_FILENAME
        path.write_bytes(content)
        path.chmod(0o600)
        with pytest.raises(KeyringError) as caught:
            LocalKeyring.load(tmp_path, require_strict_permissions=True)
        assert str(path) in str(caught.value)
        assert "c2VjcmV0c2Vj" not in str(caught.value)
        # The JSON decoder's exception keeps the whole document; it must not ride along.
        assert caught.value.__cause__ is None
        assert caught.value.__suppress_context__ or caught.value.__context__ is None


class TestLocalKeyringRotation:
    def test_rotate_master_adds_a_current_version_and_keeps_the_old(
        self, keyring: LocalKeyring
    ) -> None:
        old = keyring.master_key(1)
        assert keyring.rotate_master() == 2
        assert keyring.current_master_version() == 2
        assert keyring.master_key(1) == old
        assert keyring.master_key(2) != old

    def test_rotation_is_persisted_with_mode_0600(self, keyring: LocalKeyring) -> None:
        keyring.rotate_master()
        reloaded = LocalKeyring.load(keyring.path.parent, require_strict_permissions=True)
        assert reloaded.current_master_version() == 2
        assert reloaded.master_key(2) == keyring.master_key(2)
        assert mode_of(keyring.path) == 0o600

    def test_rotation_elsewhere_is_seen_without_restart(self, keyring: LocalKeyring) -> None:
        other = LocalKeyring.load(keyring.path.parent, require_strict_permissions=True)
        other.rotate_master()
        assert keyring.master_key(2) == other.master_key(2)

    def test_rotation_from_a_stale_instance_keeps_other_rotations(
        self, keyring: LocalKeyring
    ) -> None:
        stale = LocalKeyring.load(keyring.path.parent, require_strict_permissions=True)
        keyring.rotate_master()
        assert stale.rotate_master() == 3
        reloaded = LocalKeyring.load(keyring.path.parent, require_strict_permissions=True)
        assert reloaded.master_key(2) == keyring.master_key(2)

    def test_unknown_version_is_refused(self, keyring: LocalKeyring) -> None:
        with pytest.raises(UnknownKeyVersion, match="version 7") as caught:
            keyring.master_key(7)
        assert isinstance(caught.value, KeyError)
        assert caught.value.version == 7

    def test_add_signing_key_puts_the_new_key_first(self, keyring: LocalKeyring) -> None:
        [(old_kid, old_pem)] = keyring.service_signing_keys()
        kid = keyring.add_signing_key()
        assert kid != old_kid
        assert [k for k, _ in keyring.service_signing_keys()] == [kid, old_kid]
        reloaded = LocalKeyring.load(keyring.path.parent, require_strict_permissions=True)
        assert reloaded.service_signing_keys()[1] == (old_kid, old_pem)
        assert reloaded.service_signing_keys()[0][0] == kid


class TestWrapThroughProvider:
    def test_round_trip(self, keyring: LocalKeyring) -> None:
        key = crypto.new_key()
        wrapped = keyring.wrap(1, key, AAD)
        assert keyring.unwrap(1, wrapped, AAD) == key

    def test_other_aad_is_corruption(self, keyring: LocalKeyring) -> None:
        wrapped = keyring.wrap(1, crypto.new_key(), AAD)
        with pytest.raises(CorruptionError):
            keyring.unwrap(1, wrapped, crypto.associated_data("member_keys", "SAU", 1))

    def test_other_master_version_is_corruption(self, keyring: LocalKeyring) -> None:
        wrapped = keyring.wrap(1, crypto.new_key(), AAD)
        keyring.rotate_master()
        with pytest.raises(CorruptionError):
            keyring.unwrap(2, wrapped, AAD)

    def test_unknown_version_is_refused(self, keyring: LocalKeyring) -> None:
        with pytest.raises(UnknownKeyVersion):
            keyring.wrap(9, crypto.new_key(), AAD)

    def test_a_provider_can_wrap_without_exporting_its_master_key(self) -> None:
        class FakeKms(KeyProvider):
            """Stands in for a KMS: wrap/unwrap overridden, master_key refused."""

            def __init__(self) -> None:
                self._inside_kms = crypto.new_key()

            @property
            def is_development(self) -> bool:
                return False

            def current_master_version(self) -> int:
                return 1

            def master_key(self, version: int) -> SecretBytes:
                raise NotImplementedError("the master key never leaves the KMS")

            def index_key(self) -> SecretBytes:
                return crypto.new_key()

            def service_signing_keys(self) -> list[tuple[str, str]]:
                return []

            def wrap(self, version: int, key: SecretBytes, aad: bytes) -> bytes:
                return crypto.wrap_key(self._inside_kms, key, aad)

            def unwrap(self, version: int, blob: bytes, aad: bytes) -> SecretBytes:
                return crypto.unwrap_key(self._inside_kms, blob, aad)

        provider: KeyProvider = FakeKms()
        key = crypto.new_key()
        assert provider.unwrap(1, provider.wrap(1, key, AAD), AAD) == key


def _env(
    master: str | None = None, index: str | None = None, signing: str | None = None
) -> dict[str, str]:
    return {
        "TEARLINE_MASTER_KEYS": master
        if master is not None
        else f"1:{b64(b'1' * 32)},2:{b64(b'2' * 32)}",
        "TEARLINE_INDEX_KEY": index if index is not None else b64(b"i" * 32),
        "TEARLINE_SIGNING_KEYS": signing
        if signing is not None
        else f"new={b64(SIGNING_PEM_NEW.encode())},old={b64(SIGNING_PEM_OLD.encode())}",
    }


SIGNING_PEM_NEW = pem_of(ec.generate_private_key(ec.SECP256R1()))
SIGNING_PEM_OLD = pem_of(ec.generate_private_key(ec.SECP256R1()))


class TestEnvKeyProvider:
    def test_parses_all_variables(self) -> None:
        provider = EnvKeyProvider(_env())
        assert provider.current_master_version() == 2
        assert provider.master_key(1) == SecretBytes(b"1" * 32)
        assert provider.master_key(2) == SecretBytes(b"2" * 32)
        assert provider.index_key() == SecretBytes(b"i" * 32)
        assert provider.service_signing_keys() == [
            ("new", SIGNING_PEM_NEW),
            ("old", SIGNING_PEM_OLD),
        ]
        assert provider.is_development is False

    def test_current_version_is_the_highest_whatever_the_order(self) -> None:
        provider = EnvKeyProvider(_env(master=f" 3:{b64(b'3' * 32)} , 1:{b64(b'1' * 32)}"))
        assert provider.current_master_version() == 3

    def test_reads_os_environ_by_default(self, monkeypatch: pytest.MonkeyPatch) -> None:
        for name, value in _env().items():
            monkeypatch.setenv(name, value)
        assert EnvKeyProvider().current_master_version() == 2

    def test_wraps_through_master_key(self) -> None:
        provider = EnvKeyProvider(_env())
        key = crypto.new_key()
        assert provider.unwrap(2, provider.wrap(2, key, AAD), AAD) == key
        with pytest.raises(UnknownKeyVersion):
            provider.master_key(3)

    def test_repr_shows_no_keys(self) -> None:
        text = repr(EnvKeyProvider(_env()))
        assert b64(b"1" * 32) not in text
        assert "PRIVATE" not in text

    @pytest.mark.parametrize(
        "variable", ["TEARLINE_MASTER_KEYS", "TEARLINE_INDEX_KEY", "TEARLINE_SIGNING_KEYS"]
    )
    def test_missing_variable_is_named(self, variable: str) -> None:
        env = _env()
        del env[variable]
        with pytest.raises(KeyringError, match=f"{variable}: is not set"):
            EnvKeyProvider(env)

    @pytest.mark.parametrize(
        ("overrides", "variable"),
        [
            pytest.param({"master": b64(b"1" * 32)}, "TEARLINE_MASTER_KEYS", id="no-version"),
            pytest.param({"master": f"x:{b64(b'1' * 32)}"}, "TEARLINE_MASTER_KEYS", id="bad-ver"),
            pytest.param({"master": f"0:{b64(b'1' * 32)}"}, "TEARLINE_MASTER_KEYS", id="ver-0"),
            pytest.param({"master": f"-1:{b64(b'1' * 32)}"}, "TEARLINE_MASTER_KEYS", id="neg"),
            pytest.param(
                {"master": f"1:{b64(b'1' * 32)},1:{b64(b'2' * 32)}"},
                "TEARLINE_MASTER_KEYS",
                id="duplicate",
            ),
            pytest.param({"master": "1:%%%%"}, "TEARLINE_MASTER_KEYS", id="not-base64"),
            pytest.param({"master": f"1:{b64(b'1' * 24)}"}, "TEARLINE_MASTER_KEYS", id="short"),
            pytest.param({"master": f"1:{b64(b'1' * 32)},"}, "TEARLINE_MASTER_KEYS", id="trail"),
            pytest.param({"index": b64(b"i" * 16)}, "TEARLINE_INDEX_KEY", id="index-short"),
            pytest.param({"index": b64(b"1" * 32)}, "TEARLINE_INDEX_KEY", id="index-is-master"),
            pytest.param({"signing": "kid-without-value"}, "TEARLINE_SIGNING_KEYS", id="no-eq"),
            pytest.param({"signing": f"={b64(b'x')}"}, "TEARLINE_SIGNING_KEYS", id="no-kid"),
            pytest.param({"signing": "k=%%%"}, "TEARLINE_SIGNING_KEYS", id="pem-not-b64"),
            pytest.param(
                {"signing": f"k={b64(b'not a pem')}"}, "TEARLINE_SIGNING_KEYS", id="not-pem"
            ),
            pytest.param(
                {"signing": f"k={b64(RSA_PEM.encode())}"}, "TEARLINE_SIGNING_KEYS", id="rsa"
            ),
            pytest.param(
                {"signing": f"k={b64(SIGNING_PEM_NEW.encode())},k={b64(SIGNING_PEM_OLD.encode())}"},
                "TEARLINE_SIGNING_KEYS",
                id="duplicate-kid",
            ),
        ],
    )
    def test_malformed_variable_is_refused_without_leaking_it(
        self, overrides: dict[str, str], variable: str
    ) -> None:
        env = _env(**overrides)
        with pytest.raises(KeyringError) as caught:
            EnvKeyProvider(env)
        message = str(caught.value)
        assert variable in message
        assert b64(b"1" * 32) not in message
        assert b64(b"i" * 16) not in message
        assert "PRIVATE KEY" not in message
        assert caught.value.__cause__ is None
