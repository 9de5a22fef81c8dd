import pytest

from aigw_common.crypto import (
    PURPOSE_AT_REST,
    PURPOSE_BUS,
    Sealer,
    hash_token,
    mask_secret,
    new_token,
)
from aigw_common.errors import CryptoError

A, B = b"a" * 32, b"b" * 32


def test_roundtrip_and_no_plaintext():
    s = Sealer.from_keys((A,))
    sealed = s.seal("sk-secret-value")
    assert "sk-secret" not in sealed
    assert s.open(sealed) == "sk-secret-value"
    assert s.seal("x") != s.seal("x")  # random nonce


def test_rotation_keeps_old_rows_readable():
    old = Sealer.from_keys((A,)).seal("v")
    rotated = Sealer.from_keys((B, A))
    assert rotated.open(old) == "v"
    assert rotated.key_id_of(rotated.seal("w")) == rotated.current_key_id != Sealer.from_keys((A,)).current_key_id


def test_unknown_key_and_tamper():
    sealed = Sealer.from_keys((A,)).seal("v")
    with pytest.raises(CryptoError, match="unknown key id"):
        Sealer.from_keys((B,)).open(sealed)
    tampered = sealed[:-2] + ("A" if sealed[-2] != "A" else "B") + sealed[-1]
    with pytest.raises(CryptoError):
        Sealer.from_keys((A,)).open(tampered)


def test_purposes_do_not_cross():
    bus_sealed = Sealer.from_keys((A,), PURPOSE_BUS).seal("v")
    with pytest.raises(CryptoError):
        Sealer.from_keys((A,), PURPOSE_AT_REST).open(bus_sealed)


def test_tokens_and_masks():
    t = new_token()
    assert t.startswith("aigw_") and len(hash_token(t)) == 64
    assert mask_secret("sk-abcdefghijklmnop") == "sk-…mnop"
    assert "cdefghijkl" not in mask_secret("sk-abcdefghijklmnop")
