"""Snapshot blobs: a session's state and seq, sealed so that a restore can trust them.

Layout (all integers little-endian)::

    b"SSNP" | format u8 | header length u32 | header (JSON) | tensor bytes | HMAC-SHA256 (32 bytes)

The header names the model, its version, the last applied seq and each state tensor (name,
dtype, shape, byte offset). The MAC covers everything before it and is keyed by the server's
snapshot secret, so a blob that was altered, truncated or made by hand is refused, and a blob
of another model or version is refused by name. Nothing in a blob is ever executed or unpickled.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
import struct
from dataclasses import dataclass

import numpy as np

from service.contract import Manifest
from service.errors import FailedPrecondition, InvalidArgument
from service.settings import MIN_SNAPSHOT_SECRET_BYTES

MAGIC = b"SSNP"
FORMAT = 1
_PREFIX = struct.Struct("<4sBI")
_MAC_BYTES = 32


@dataclass(frozen=True)
class SnapshotData:
    model: str
    version: str
    last_seq: int
    state: dict[str, np.ndarray]


class Sealer:
    """Seals and opens snapshot blobs with one secret key."""

    def __init__(self, key: bytes) -> None:
        if len(key) < MIN_SNAPSHOT_SECRET_BYTES:
            raise ValueError(f"the snapshot secret must be at least {MIN_SNAPSHOT_SECRET_BYTES} bytes")
        self._key = key

    @classmethod
    def from_secret(cls, secret: str) -> Sealer:
        """A sealer keyed by ``--snapshot-secret``; without one, by a random per-process key."""
        return cls(secret.encode() if secret else secrets.token_bytes(32))

    def _mac(self, body: bytes) -> bytes:
        return hmac.new(self._key, body, hashlib.sha256).digest()

    def seal(self, manifest: Manifest, last_seq: int, state: dict[str, np.ndarray]) -> bytes:
        tensors, chunks, offset = [], [], 0
        for spec in manifest.rows:
            data = np.ascontiguousarray(state[spec.input], dtype=np.dtype(spec.np_dtype).newbyteorder("<")).tobytes()
            tensors.append({"name": spec.input, "dtype": spec.dtype, "shape": list(spec.shape), "offset": offset})
            chunks.append(data)
            offset += len(data)
        header = json.dumps(
            {"model": manifest.name, "version": manifest.version, "last_seq": last_seq, "tensors": tensors},
            separators=(",", ":"),
        ).encode()
        body = _PREFIX.pack(MAGIC, FORMAT, len(header)) + header + b"".join(chunks)
        return body + self._mac(body)

    def open(self, blob: bytes, manifest: Manifest) -> SnapshotData:
        """Checks the blob against the MAC and the model; raises naming what is wrong."""
        if len(blob) < _PREFIX.size + _MAC_BYTES:
            raise InvalidArgument("snapshot blob is too short to be a snapshot")
        magic, version, header_len = _PREFIX.unpack_from(blob)
        if magic != MAGIC:
            raise InvalidArgument("not a statestream snapshot blob (bad magic)")
        if version != FORMAT:
            raise InvalidArgument(f"snapshot format {version} is not supported (this server reads format {FORMAT})")
        body, mac = blob[:-_MAC_BYTES], blob[-_MAC_BYTES:]
        if not hmac.compare_digest(mac, self._mac(body)):
            raise InvalidArgument("snapshot checksum mismatch: the blob was altered or sealed by another server key")
        try:
            header = json.loads(body[_PREFIX.size : _PREFIX.size + header_len])
        except (ValueError, UnicodeDecodeError):
            raise InvalidArgument("snapshot header is not valid JSON") from None
        if (header.get("model"), header.get("version")) != (manifest.name, manifest.version):
            raise FailedPrecondition(
                f"snapshot is of model {header.get('model')!r} version {header.get('version')!r}, "
                f"not {manifest.name!r} version {manifest.version!r}"
            )
        data = body[_PREFIX.size + header_len :]
        state: dict[str, np.ndarray] = {}
        by_name = {t["name"]: t for t in header.get("tensors", [])}
        for spec in manifest.rows:
            entry = by_name.get(spec.input)
            if entry is None or entry["dtype"] != spec.dtype or tuple(entry["shape"]) != spec.shape:
                raise FailedPrecondition(f"snapshot state {spec.input!r} does not match the model's state tensors")
            start, size = int(entry["offset"]), spec.nbytes
            if start < 0 or start + size > len(data):
                raise InvalidArgument(f"snapshot state {spec.input!r} runs past the end of the blob")
            raw = np.frombuffer(
                data,
                dtype=np.dtype(spec.np_dtype).newbyteorder("<"),
                count=size // np.dtype(spec.np_dtype).itemsize,
                offset=start,
            )
            state[spec.input] = raw.reshape(spec.shape).astype(spec.np_dtype)
        last_seq = int(header.get("last_seq", -1))
        if last_seq < 0:
            raise InvalidArgument("snapshot has no valid last_seq")
        return SnapshotData(manifest.name, manifest.version, last_seq, state)
