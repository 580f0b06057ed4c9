"""Signed, stateless impression ids: any replica verifies feedback with a signature check, no memory, no store.

An impression id carries what feedback needs, signed with an HMAC-SHA256 key from the environment:

    version 1 | key id 1 | served-at ms 6 | uuid 16 | experiment | arm | unit id | results shown 2
    | shown-documents filter | MAC 16

(names are length-prefixed; base64url without padding). The shown-documents filter is a Bloom filter of the
(position, doc_id) pairs of the response (about 12 bits per result, at least 128: a wrong document or
position passes with probability under 1%), so feedback on a document that was not shown where the client
says is refused without storing the list. The MAC covers every byte before it: a forged or tampered id fails
the check (404, as an unknown id); one older than the ttl is refused (410), whatever replica served it.

Keys: `ABGATE_IMPRESSION_KEYS` = `ID:SECRET[,ID:SECRET...]` (ID 0-255, SECRET base64 or text of at least 16
bytes). The first key signs; every listed key verifies. Rotation, in three rollouts: (1) append the new key
on every replica (it only verifies, so no replica signs with a key that another cannot check yet); (2) move it
to the front everywhere (it signs); (3) remove the old key `impression_ttl_s` after step 2 reached every
replica, when no id it signed is accepted any more. Without keys the gateway makes a random key at start
and logs that feedback then only verifies on this process until it restarts.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets
import struct
import time
import uuid
from dataclasses import dataclass

from experiments.errors import InputError

VERSION = 1
MAC_BYTES = 16
MIN_SECRET_BYTES = 16
_HASHES = 7


class ImpressionRejected(Exception):
    """Not an id this gateway family signed (forged, tampered, unknown key): answered like an unknown id."""


class ImpressionTooOld(Exception):
    """Signed, but older than the ttl."""


@dataclass(frozen=True)
class SignedImpression:
    impression_id: str
    served_at: float              # epoch seconds
    experiment: str
    arm: str
    unit_id: str
    uuid: str
    count: int                    # results shown
    _filter: bytes

    def shown(self, doc_id: str, position: int) -> bool:
        """Whether `doc_id` was shown at `position` (Bloom filter: never a false no)."""
        return _contains(self._filter, position, doc_id)


def parse_keys(text: str | None) -> dict[int, bytes]:
    """`ID:SECRET,...` -> {id: secret}, in the order given (the first signs). InputError naming the setting."""
    keys: dict[int, bytes] = {}
    for part in (p.strip() for p in (text or "").split(",") if p.strip()):
        key_id, sep, secret = part.partition(":")
        if not sep or not key_id.strip().isdigit() or not 0 <= int(key_id) <= 255:
            raise InputError("each key must be ID:SECRET with ID a number from 0 to 255, e.g. 1:$(openssl rand "
                             "-base64 32)", field="impression_keys")
        raw = _secret_bytes(secret.strip())
        if len(raw) < MIN_SECRET_BYTES:
            raise InputError(f"key {key_id} is shorter than {MIN_SECRET_BYTES} bytes: use a random secret of 32 "
                             "bytes, e.g. $(openssl rand -base64 32)", field="impression_keys")
        if int(key_id) in keys:
            raise InputError(f"key id {key_id} is listed twice: give each key its own id", field="impression_keys")
        keys[int(key_id)] = raw
    return keys


def _secret_bytes(secret: str) -> bytes:
    try:
        decoded = base64.b64decode(secret, validate=True)
        if len(decoded) >= MIN_SECRET_BYTES:
            return decoded
    except (binascii.Error, ValueError):
        pass
    return secret.encode()


class ImpressionSigner:
    def __init__(self, keys: dict[int, bytes] | None = None, ttl_s: float = 3600.0) -> None:
        self.ephemeral = not keys
        self.keys = dict(keys) if keys else {0: secrets.token_bytes(32)}
        self.signing_id = next(iter(self.keys))
        self.ttl_s = ttl_s

    def sign(self, experiment: str, arm: str, unit_id: str, shown: list[str], served_at: float | None = None) -> str:
        served_ms = int((time.time() if served_at is None else served_at) * 1000)
        body = bytearray(struct.pack(">BB", VERSION, self.signing_id))
        body += served_ms.to_bytes(6, "big") + uuid.uuid4().bytes
        for name, width in ((experiment, 1), (arm, 1), (unit_id, 2)):
            raw = name.encode()
            body += len(raw).to_bytes(width, "big") + raw
        body += len(shown).to_bytes(2, "big") + _bloom(shown)
        body += _mac(self.keys[self.signing_id], bytes(body))
        return base64.urlsafe_b64encode(bytes(body)).rstrip(b"=").decode()

    def verify(self, impression_id: str, now: float | None = None) -> SignedImpression:
        try:
            data = base64.urlsafe_b64decode(impression_id + "=" * (-len(impression_id) % 4))
        except (binascii.Error, ValueError):
            raise ImpressionRejected("not an impression id") from None
        if len(data) < 2 + 6 + 16 + 4 + 4 + MAC_BYTES or data[0] != VERSION:
            raise ImpressionRejected("not an impression id")
        key = self.keys.get(data[1])
        if key is None or not hmac.compare_digest(_mac(key, data[:-MAC_BYTES]), data[-MAC_BYTES:]):
            raise ImpressionRejected("the signature does not match")
        try:
            offset = 8
            served_ms = int.from_bytes(data[2:8], "big")
            ident = uuid.UUID(bytes=data[offset:offset + 16]).hex
            offset += 16
            names = []
            for width in (1, 1, 2):
                n = int.from_bytes(data[offset:offset + width], "big")
                offset += width
                names.append(data[offset:offset + n].decode())
                offset += n
            count = int.from_bytes(data[offset:offset + 2], "big")
            offset += 2
            bits = int.from_bytes(data[offset:offset + 2], "big")
            filt = data[offset:offset + 2 + bits // 8]
        except (UnicodeDecodeError, ValueError):  # a valid MAC over malformed content: never ours
            raise ImpressionRejected("malformed") from None
        served = served_ms / 1000
        if (time.time() if now is None else now) - served > self.ttl_s:
            raise ImpressionTooOld(impression_id)
        return SignedImpression(impression_id, served, names[0], names[1], names[2], ident, count, filt)


def _mac(key: bytes, body: bytes) -> bytes:
    return hmac.new(key, body, hashlib.sha256).digest()[:MAC_BYTES]


def _positions(bits: int, position: int, doc_id: str) -> list[int]:
    digest = hashlib.sha256(f"{position}\x00{doc_id}".encode()).digest()
    h1, h2 = int.from_bytes(digest[:8], "big"), int.from_bytes(digest[8:16], "big") | 1
    return [(h1 + i * h2) % bits for i in range(_HASHES)]


def _bloom(shown: list[str]) -> bytes:
    bits = max(128, -(-12 * len(shown) // 8) * 8)
    array = bytearray(bits // 8)
    for position, doc_id in enumerate(shown, 1):
        for bit in _positions(bits, position, doc_id):
            array[bit // 8] |= 1 << (bit % 8)
    return bits.to_bytes(2, "big") + bytes(array)


def _contains(filt: bytes, position: int, doc_id: str) -> bool:
    bits = int.from_bytes(filt[:2], "big")
    array = filt[2:]
    if bits == 0 or len(array) * 8 < bits:
        return False
    return all(array[bit // 8] >> (bit % 8) & 1 for bit in _positions(bits, position, doc_id))
