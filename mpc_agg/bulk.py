"""Sealed chunks: how a dense share travels to its party outside CURVE (docs/PROTOCOL.md, "Sealed chunks").

CURVE (RFC 26) authenticates every control message, but it seals bulk data at about
1 ms per MB at each end, more than the rest of a client's work on a share.  So the
party that takes a client's dense share draws a fresh 256-bit key for that upload
when it admits it and returns the key in its REPORT_BEGIN reply, over CURVE: only
that client and that party know it.  Each chunk then goes to the party's bulk
endpoint sealed with AES-256-GCM (NIST SP 800-38D), a few times faster than CURVE:

* **nonce** (96 bits, the deterministic construction of SP 800-38D §8.2.1): a direction
  byte (0: client to party, 1: party to client), three zero bytes, and the chunk's offset
  (in values) as 64 bits.  A key serves one upload and the offsets in each direction
  strictly increase, so no nonce repeats under a key;
* **associated data**: a versioned label, the kind (chunk or acknowledgement), the
  round, the report id, the offset and the value count (for an acknowledgement, whether
  the upload is done).  A chunk moved to another offset or another report, or altered,
  fails to open.

The party acknowledges each chunk with a GCM tag over (report id, next offset, done)
under the same key, so the client knows that the final "done" (sent after the fsync)
came from the party.  This module is pure: no sockets, no state beyond one upload's key.
"""

from __future__ import annotations

import hmac
import os
import struct

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from .errors import SealError

__all__ = ["KEY_BYTES", "TAG_BYTES", "UploadSeal", "new_key"]

KEY_BYTES = 32
TAG_BYTES = 16
_LABEL = b"mpc-agg/sealed-chunk/v1"
_AD = struct.Struct(">23sBQ16sQQ")  # label, kind, round, report id, offset, count (or done)
_CHUNK, _ACK = 0, 1
_MAX_OFFSET = 2**64 - 1


def new_key() -> bytes:
    """A fresh upload key from the OS CSPRNG."""
    return os.urandom(KEY_BYTES)


def _bytes(data: object) -> memoryview:
    """``data`` as a flat byte view (numpy buffers of any dtype, frames, bytes)."""
    return memoryview(data).cast("B")  # type: ignore[arg-type]


class UploadSeal:
    """One upload's AES-256-GCM context: its key, round and report id."""

    def __init__(self, key: bytes, round_id: int, report_id: bytes) -> None:
        if len(key) != KEY_BYTES or len(report_id) != 16:
            raise SealError(f"an upload key has {KEY_BYTES} bytes and a report id 16")
        self._aead = AESGCM(key)
        self.round_id, self.report_id = round_id, report_id

    def _nonce_ad(self, kind: int, offset: int, count: int) -> tuple[bytes, bytes]:
        if not (0 <= offset <= _MAX_OFFSET and 0 <= count <= _MAX_OFFSET):
            raise SealError("offset or count out of range")
        nonce = bytes([kind]) + b"\0\0\0" + offset.to_bytes(8, "big")
        return nonce, _AD.pack(_LABEL, kind, self.round_id, self.report_id, offset, count)

    def seal_chunk(self, offset: int, count: int, data: object) -> bytes:
        """``data`` (the ``count`` values at ``offset``) encrypted, with its 16-byte tag appended."""
        nonce, ad = self._nonce_ad(_CHUNK, offset, count)
        return self._aead.encrypt(nonce, _bytes(data), ad)

    def open_chunk(self, offset: int, count: int, sealed: object) -> bytes:
        """The plaintext of a chunk sealed for ``offset``/``count`` of this upload, or SealError."""
        nonce, ad = self._nonce_ad(_CHUNK, offset, count)
        try:
            return self._aead.decrypt(nonce, _bytes(sealed), ad)
        except InvalidTag:
            raise SealError("the chunk failed authentication (altered, or sealed for another offset or "
                            "report)") from None

    def ack_tag(self, next_offset: int, done: bool) -> str:
        """The party's tag (hex) on "received up to ``next_offset``" (``done``: and durable)."""
        nonce, ad = self._nonce_ad(_ACK, next_offset, int(done))
        return self._aead.encrypt(nonce, b"", ad).hex()  # empty plaintext: the output is the tag

    def check_ack(self, next_offset: int, done: bool, tag: object) -> None:
        """SealError unless ``tag`` is the party's tag on (``next_offset``, ``done``)."""
        if not (isinstance(tag, str) and hmac.compare_digest(tag, self.ack_tag(next_offset, done))):
            raise SealError("the party's acknowledgement failed authentication")
