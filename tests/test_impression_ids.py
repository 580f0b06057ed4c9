"""Signed impression ids (gateway/impression_ids.py): verified by any replica with the key, nothing else."""

from __future__ import annotations

import base64
import time

import pytest

from experiments.errors import InputError
from gateway.impression_ids import ImpressionRejected, ImpressionSigner, ImpressionTooOld, parse_keys

KEY = base64.b64encode(b"k" * 32).decode()
DOCS = [f"doc-{i}" for i in range(10)]


def test_a_signed_id_carries_its_facts_and_verifies_on_another_signer_with_the_key():
    a, b = ImpressionSigner(parse_keys(f"1:{KEY}")), ImpressionSigner(parse_keys(f"1:{KEY}"))
    token = a.sign("exp", "treatment", "user-42", DOCS)
    served = b.verify(token)
    assert (served.experiment, served.arm, served.unit_id) == ("exp", "treatment", "user-42")
    assert abs(served.served_at - time.time()) < 5
    assert all(served.shown(doc, i) for i, doc in enumerate(DOCS, 1))
    assert a.sign("exp", "treatment", "user-42", DOCS) != token  # a fresh uuid each time


def test_wrong_documents_and_positions_are_refused():
    signer = ImpressionSigner(parse_keys(f"1:{KEY}"))
    served = signer.verify(signer.sign("exp", "a", "u", DOCS))
    wrong = sum(served.shown(f"other-{i}", 1 + i % 10) for i in range(2000))
    moved = sum(served.shown(doc, p) for p in range(1, 11) for i, doc in enumerate(DOCS, 1) if p != i)
    assert wrong / 2000 < 0.01 and moved / 90 < 0.05   # a Bloom filter: rare false yes, never a false no


def test_forged_tampered_and_foreign_ids_are_rejected():
    signer = ImpressionSigner(parse_keys(f"1:{KEY}"))
    token = signer.sign("exp", "a", "u", DOCS)
    raw = bytearray(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
    for index in (2, 10, 30, len(raw) - 1):   # served-at, uuid, names, MAC
        tampered = bytearray(raw)
        tampered[index] ^= 1
        with pytest.raises(ImpressionRejected):
            signer.verify(base64.urlsafe_b64encode(bytes(tampered)).rstrip(b"=").decode())
    for junk in ("", "x", "not-an-id!", "A" * 500, token[:-4]):
        with pytest.raises(ImpressionRejected):
            signer.verify(junk)
    with pytest.raises(ImpressionRejected):   # another key
        ImpressionSigner(parse_keys(f"1:{base64.b64encode(b'z' * 32).decode()}")).verify(token)


def test_rotation_keeps_old_keys_verifying_and_expiry_holds():
    old = ImpressionSigner(parse_keys(f"1:{KEY}"), ttl_s=60)
    token = old.sign("exp", "a", "u", DOCS, served_at=time.time() - 30)
    rotated = ImpressionSigner(parse_keys(f"2:{base64.b64encode(b'n' * 32).decode()},1:{KEY}"), ttl_s=60)
    assert rotated.verify(token).unit_id == "u" and rotated.signing_id == 2
    with pytest.raises(ImpressionTooOld):
        rotated.verify(token, now=time.time() + 40)


def test_keys_setting_is_validated():
    for bad in ("nocolon", "300:" + KEY, "1:short", f"1:{KEY},1:{KEY}"):
        with pytest.raises(InputError) as info:
            parse_keys(bad)
        assert info.value.field == "impression_keys"
    assert ImpressionSigner({}).ephemeral and not ImpressionSigner(parse_keys(f"7:{KEY}")).ephemeral
