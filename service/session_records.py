"""A session as bytes: what another process needs to carry on with it exactly where it was.

A record holds everything that decides a session's next answer: its model and version, its
caller (a resume by another caller is refused as not found, as in one process), its options,
the last applied seq with that seq's answer (a client whose answer was lost resends the seq
and must get the same answer back, not an empty duplicate), its row (state and context), the
row a reset returns to, and the driver's scratch (a language model's last logits).

Layout (format 2): ``b"SSRC" | format u8 | header length u32 | last seq i64 | reply length u32 |
header (JSON) | array bytes | reply``. The header names each array's group, name, dtype, shape
and offset; what changes every step sits in fixed fields before it, so a session's header is
built once (``RecordEncoder``) and a checkpoint is a join of bytes. Format 1 (last seq and reply
length inside the header) is still read. Nothing is pickled or executed. The record is not sealed:
it travels only between the server and its session store, which the operator trusts like the
server's own memory (docs/operations.md says so).
"""

from __future__ import annotations

import json
import struct
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from service.errors import FailedPrecondition

MAGIC = b"SSRC"
FORMAT = 2
_PREFIX = struct.Struct("<4sBI")  # magic, format, header length
_PROGRESS = struct.Struct("<qI")  # format 2: last seq, reply length
_GROUPS = ("rows", "initial", "scratch")
_NATIVE_LITTLE = sys.byteorder == "little"

#: The arrays of a record by group: rows, initial (None: a reset returns to zeros), scratch.
Arrays = tuple[Mapping[str, np.ndarray], Mapping[str, np.ndarray] | None, Mapping[str, np.ndarray]]


@dataclass(frozen=True)
class RecordIdentity:
    """What a record says of its session that never changes while one process holds it."""

    session_id: str
    model: str
    version: str
    caller: str
    top_k: int
    return_tensors: tuple[str, ...]


def _little_endian(value: np.ndarray) -> bytes:
    """The array's bytes in C order, little-endian (one copy; a second only on a big-endian array)."""
    order = value.dtype.byteorder
    if order in "<|" or (order == "=" and _NATIVE_LITTLE):
        return value.tobytes()
    return value.astype(value.dtype.newbyteorder("<")).tobytes()


def _layout(arrays: Arrays) -> tuple[tuple[str, str, str, tuple[int, ...]], ...]:
    """Each array's group, name, dtype and shape: what a header is built from besides the identity."""
    rows, initial, scratch = arrays
    return tuple(
        (group, name, value.dtype.str, value.shape)
        for group, values in zip(_GROUPS, (rows, initial or {}, scratch), strict=True)
        for name, value in values.items()
    )


def _header(identity: RecordIdentity, arrays: Arrays, reply_kind: str) -> bytes:
    """The prefix and JSON header of a record of ``arrays``' layout (format 2)."""
    table: list[dict[str, object]] = []
    offset = 0
    for group, name, dtype, shape in _layout(arrays):
        size = int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize
        table.append(
            {"group": group, "name": name, "dtype": dtype.lstrip("<>|="), "shape": list(shape), "offset": offset,
             "size": size}
        )  # fmt: skip
        offset += size
    header = {
        "id": identity.session_id,
        "model": identity.model,
        "version": identity.version,
        "caller": identity.caller,
        "top_k": identity.top_k,
        "return_tensors": list(identity.return_tensors),
        "has_initial": arrays[1] is not None,
        "reply_kind": reply_kind,
        "arrays": table,
    }
    return json.dumps(header, separators=(",", ":")).encode()


def _chunks(arrays: Arrays) -> list[bytes]:
    rows, initial, scratch = arrays
    return [_little_endian(value) for values in (rows, initial or {}, scratch) for value in values.values()]


def _joined(header: bytes, last_seq: int, chunks: list[bytes], reply: bytes) -> bytes:
    prefix = _PREFIX.pack(MAGIC, FORMAT, len(header)) + _PROGRESS.pack(last_seq, len(reply))
    return b"".join((prefix, header, *chunks, reply))


class RecordEncoder:
    """Encodes one session's checkpoints: its header is built once per layout, then each record is a join.

    The rows (a slab row of the session's model) and the initial row (set when it opened) keep
    their layout for the session's life; its scratch may gain an array or change one's shape (a
    voice call's buffered tail), and its answer's kind may change: the header is built again
    then, and whenever the arrays' bytes add up to another size than the header's.
    """

    def __init__(self, identity: RecordIdentity) -> None:
        self.identity = identity
        self._key: tuple[Any, ...] | None = None
        self._header = self._prefix = b""

    def encode(self, last_seq: int, arrays: Arrays, reply_kind: str, reply: bytes) -> bytes:
        """The record, byte for byte what ``SessionRecord(...).to_bytes()`` writes for the same session."""
        rows, initial, scratch = arrays
        chunks = [_little_endian(value) for value in rows.values()]
        if initial is not None:
            chunks += map(_little_endian, initial.values())
        scratch_layout: tuple[tuple[str, str, tuple[int, ...]], ...] = ()
        if scratch:
            chunks += map(_little_endian, scratch.values())
            scratch_layout = tuple((name, value.dtype.str, value.shape) for name, value in scratch.items())
        key = (reply_kind, initial is not None, scratch_layout, sum(map(len, chunks)))
        if key != self._key:
            self._header, self._key = _header(self.identity, arrays, reply_kind), key
            self._prefix = _PREFIX.pack(MAGIC, FORMAT, len(self._header))
        return b"".join((self._prefix, _PROGRESS.pack(last_seq, len(reply)), self._header, *chunks, reply))


@dataclass(frozen=True)
class SessionRecord(RecordIdentity):
    """A session as read back from a record, or to be written as one."""

    last_seq: int
    rows: dict[str, np.ndarray]
    initial: dict[str, np.ndarray] | None
    scratch: dict[str, np.ndarray]
    #: The answer to ``last_seq``: its kind (a ReplyKind value) and the serialized message; "" and b"" if none.
    reply_kind: str = ""
    reply: bytes = b""

    @property
    def identity(self) -> RecordIdentity:
        return RecordIdentity(self.session_id, self.model, self.version, self.caller, self.top_k, self.return_tensors)

    def to_bytes(self) -> bytes:
        arrays: Arrays = (self.rows, self.initial, self.scratch)
        return _joined(_header(self.identity, arrays, self.reply_kind), self.last_seq, _chunks(arrays), self.reply)

    @classmethod
    def from_bytes(cls, blob: bytes) -> SessionRecord:
        """Reads a record (format 2, or 1); a blob that is not one, or of another format, is refused by name."""
        if len(blob) < _PREFIX.size:
            raise FailedPrecondition("the session store holds a damaged record for this session")
        magic, version, header_len = _PREFIX.unpack_from(blob)
        if magic != MAGIC or version not in (1, FORMAT):
            raise FailedPrecondition(f"the session store's record is not format {FORMAT} (written by another server?)")
        start = _PREFIX.size
        if version == FORMAT:
            last_seq, reply_size = _PROGRESS.unpack_from(blob, start)
            start += _PROGRESS.size
        header = json.loads(blob[start : start + header_len])
        if version == 1:
            last_seq, reply_size = int(header["last_seq"]), int(header["reply_size"])
        data = memoryview(blob)[start + header_len :]
        groups: dict[str, dict[str, np.ndarray]] = {group: {} for group in _GROUPS}
        end = 0
        for entry in header["arrays"]:
            dtype = np.dtype(entry["dtype"]).newbyteorder("<")
            offset, size = int(entry["offset"]), int(entry["size"])
            array = np.frombuffer(data[offset : offset + size], dtype=dtype).reshape(entry["shape"])
            groups[entry["group"]][entry["name"]] = array.astype(dtype.newbyteorder("="))
            end = max(end, offset + size)
        return cls(
            session_id=header["id"],
            model=header["model"],
            version=header["version"],
            caller=header["caller"],
            top_k=int(header["top_k"]),
            return_tensors=tuple(header["return_tensors"]),
            last_seq=last_seq,
            rows=groups["rows"],
            initial=groups["initial"] if header["has_initial"] else None,
            scratch=groups["scratch"],
            reply_kind=header["reply_kind"],
            reply=bytes(data[end : end + reply_size]),
        )
