"""Payload encryption: AES-256-GCM over every payload Temporal stores, with rotatable keys.

A key ring holds one or more 256-bit keys, each with an id. Payloads are encrypted with the
*current* key (the first one listed) and carry its id in their metadata, so they can be decrypted
with any key still in the ring: to rotate, put the new key first and keep the old ones until no
history needs them. Keys come from a file (``TASKOMATIC_ENCRYPTION_KEY_FILE``) or an environment
variable (``TASKOMATIC_ENCRYPTION_KEYS``), one ``<id>:<base64 key>`` entry per line (or separated
by commas). Key material never appears in ``repr``, logs or error messages; only key ids do.

Kept out of workflow modules: ``cryptography`` must not be imported inside the workflow sandbox.
"""

from __future__ import annotations

import base64
import binascii
import os
import re
import secrets
from collections.abc import Sequence
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from temporalio.api.common.v1 import Payload
from temporalio.converter import PayloadCodec

ENCODING = b"binary/encrypted"
KEY_ID_METADATA = "encryption-key-id"
_NONCE_BYTES = 12
_KEY_BYTES = 32
_KEY_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")


class CodecError(ValueError):
    """Keys that cannot be loaded, or a payload that cannot be decrypted with them."""


class KeyRing:
    """Encryption keys by id; the first is the one new payloads are encrypted with."""

    def __init__(self, keys: Sequence[tuple[str, bytes]]) -> None:
        if not keys:
            raise CodecError("an encryption key ring needs at least one key")
        self._keys: dict[str, AESGCM] = {}
        for key_id, key in keys:
            if not _KEY_ID_RE.fullmatch(key_id):
                raise CodecError(f"encryption key id {key_id!r} must be 1-64 letters, digits, "
                                 "'.', '_' or '-'")
            if len(key) != _KEY_BYTES:
                raise CodecError(f"encryption key {key_id!r} must be {_KEY_BYTES} bytes "
                                 f"(AES-256), not {len(key)}")
            if key_id in self._keys:
                raise CodecError(f"encryption key id {key_id!r} is listed twice")
            self._keys[key_id] = AESGCM(key)
        self.current = keys[0][0]

    @property
    def ids(self) -> list[str]:
        return list(self._keys)

    def __repr__(self) -> str:  # never the key material
        return f"KeyRing(current={self.current!r}, ids={self.ids!r})"

    @classmethod
    def parse(cls, text: str, source: str) -> KeyRing:
        """Read ``<id>:<base64 key>`` entries (lines or comma-separated; ``#`` comments)."""
        keys: list[tuple[str, bytes]] = []
        for number, raw in enumerate(re.split(r"[\n,]", text), start=1):
            entry = raw.split("#", 1)[0].strip()
            if not entry:
                continue
            key_id, sep, encoded = entry.partition(":")
            if not sep:
                raise CodecError(f"{source}: entry {number} is not '<key id>:<base64 key>'")
            try:
                key = base64.b64decode(encoded.strip(), validate=True)
            except (binascii.Error, ValueError):
                raise CodecError(f"{source}: key {key_id.strip()!r} is not valid base64"
                                 ) from None
            keys.append((key_id.strip(), key))
        if not keys:
            raise CodecError(f"{source}: no encryption keys found")
        try:
            return cls(keys)
        except CodecError as err:
            raise CodecError(f"{source}: {err}") from None

    @classmethod
    def from_file(cls, path: Path) -> KeyRing:
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as err:
            raise CodecError(f"cannot read the encryption key file {path}: {err.strerror}"
                             ) from None
        return cls.parse(text, str(path))

    def encrypt(self, payload: Payload) -> Payload:
        nonce = os.urandom(_NONCE_BYTES)
        aad = self.current.encode()
        sealed = self._keys[self.current].encrypt(nonce, payload.SerializeToString(), aad)
        return Payload(metadata={"encoding": ENCODING, KEY_ID_METADATA: aad}, data=nonce + sealed)

    def decrypt(self, payload: Payload) -> Payload:
        key_id = payload.metadata.get(KEY_ID_METADATA, b"").decode(errors="replace")
        aes = self._keys.get(key_id)
        if aes is None:
            raise CodecError(f"payload was encrypted with key {key_id!r}, which is not among the "
                             f"loaded keys {self.ids}: add it to the key file "
                             "(TASKOMATIC_ENCRYPTION_KEY_FILE or TASKOMATIC_ENCRYPTION_KEYS)")
        data = payload.data
        try:
            plain = aes.decrypt(data[:_NONCE_BYTES], data[_NONCE_BYTES:], key_id.encode())
        except InvalidTag:
            raise CodecError(f"payload does not decrypt with key {key_id!r}: wrong key material "
                             "for that id, or the payload was altered") from None
        return Payload.FromString(plain)


def new_key() -> bytes:
    return secrets.token_bytes(_KEY_BYTES)


def key_entry(key_id: str, key: bytes) -> str:
    """One key-file line."""
    return f"{key_id}:{base64.b64encode(key).decode()}\n"


def is_encrypted(payload: Payload) -> bool:
    return payload.metadata.get("encoding") == ENCODING


class EncryptionCodec(PayloadCodec):
    """The Temporal codec: encrypts with the ring's current key, decrypts with any of its keys.

    Without a ring (encryption off) payloads pass through unchanged, but an encrypted payload
    still gets a clear error instead of an unknown-encoding failure.
    """

    def __init__(self, ring: KeyRing | None) -> None:
        self.ring = ring

    async def encode(self, payloads: Sequence[Payload]) -> list[Payload]:
        return encode_payloads(self.ring, payloads)

    async def decode(self, payloads: Sequence[Payload]) -> list[Payload]:
        return decode_payloads(self.ring, payloads)


def encode_payloads(ring: KeyRing | None, payloads: Sequence[Payload]) -> list[Payload]:
    if ring is None:
        return list(payloads)
    return [ring.encrypt(p) for p in payloads]


def decode_payloads(ring: KeyRing | None, payloads: Sequence[Payload]) -> list[Payload]:
    out: list[Payload] = []
    for p in payloads:
        if not is_encrypted(p):
            out.append(p)
        elif ring is None:
            key_id = p.metadata.get(KEY_ID_METADATA, b"?").decode(errors="replace")
            raise CodecError(f"payload is encrypted (key {key_id!r}) but no encryption keys are "
                             "configured: set TASKOMATIC_ENCRYPTION_KEY_FILE or "
                             "TASKOMATIC_ENCRYPTION_KEYS")
        else:
            out.append(ring.decrypt(p))
    return out


# --- the codec server's settings (read by the codec server and by `taskomatic dev`) -----------
