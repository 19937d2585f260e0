"""A session as bytes: what another process needs to carry on with it exactly where it was.

A record holds everything that decides a session's next answer: its model and version, its
caller (a resume by another caller is refused as not found, as in one process), its options,
the last applied seq with that seq's answer (a client whose answer was lost resends the seq
and must get the same answer back, not an empty duplicate), its row (state and context), the
row a reset returns to, and the driver's scratch (a language model's last logits).

Layout: ``b"SSRC" | format u8 | header length u32 | header (JSON) | array bytes``; the header
names each array's group, name, dtype, shape and offset. Nothing is pickled or executed. The
record is not sealed: it travels only between the server and its session store (Redis), which
the operator trusts like the server's own memory (docs/operations.md says so).
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass

import numpy as np

from service.errors import FailedPrecondition

MAGIC = b"SSRC"
FORMAT = 1
_PREFIX = struct.Struct("<4sBI")
_GROUPS = ("rows", "initial", "scratch")


@dataclass(frozen=True)
class SessionRecord:
    session_id: str
    model: str
    version: str
    caller: str
    top_k: int
    return_tensors: tuple[str, ...]
    last_seq: int
    rows: dict[str, np.ndarray]
    initial: dict[str, np.ndarray] | None
    scratch: dict[str, np.ndarray]
    #: The answer to ``last_seq``: its kind (a ReplyKind value) and the serialized message; "" and b"" if none.
    reply_kind: str = ""
    reply: bytes = b""

    def to_bytes(self) -> bytes:
        arrays: list[dict[str, object]] = []
        chunks: list[bytes] = []
        offset = 0
        groups = {"rows": self.rows, "initial": self.initial or {}, "scratch": self.scratch}
        for group in _GROUPS:
            for name, value in groups[group].items():
                data = np.ascontiguousarray(value)
                raw = data.astype(data.dtype.newbyteorder("<"), copy=False).tobytes()
                arrays.append(
                    {"group": group, "name": name, "dtype": data.dtype.str.lstrip("<>|="), "shape": list(data.shape),
                     "offset": offset, "size": len(raw)}
                )  # fmt: skip
                chunks.append(raw)
                offset += len(raw)
        header = {
            "id": self.session_id,
            "model": self.model,
            "version": self.version,
            "caller": self.caller,
            "top_k": self.top_k,
            "return_tensors": list(self.return_tensors),
            "last_seq": self.last_seq,
            "has_initial": self.initial is not None,
            "reply_kind": self.reply_kind,
            "reply_size": len(self.reply),
            "arrays": arrays,
        }
        encoded = json.dumps(header, separators=(",", ":")).encode()
        return _PREFIX.pack(MAGIC, FORMAT, len(encoded)) + encoded + b"".join(chunks) + self.reply

    @classmethod
    def from_bytes(cls, blob: bytes) -> SessionRecord:
        """Reads a record; a blob that is not one (or of another format) is refused by name."""
        if len(blob) < _PREFIX.size:
            raise FailedPrecondition("the session store holds a damaged record for this session")
        magic, version, header_len = _PREFIX.unpack_from(blob)
        if magic != MAGIC or version != FORMAT:
            raise FailedPrecondition(f"the session store's record is not format {FORMAT} (written by another server?)")
        header = json.loads(blob[_PREFIX.size : _PREFIX.size + header_len])
        data = memoryview(blob)[_PREFIX.size + header_len :]
        groups: dict[str, dict[str, np.ndarray]] = {group: {} for group in _GROUPS}
        end = 0
        for entry in header["arrays"]:
            dtype = np.dtype(entry["dtype"]).newbyteorder("<")
            start, size = int(entry["offset"]), int(entry["size"])
            array = np.frombuffer(data[start : start + size], dtype=dtype).reshape(entry["shape"])
            groups[entry["group"]][entry["name"]] = array.astype(dtype.newbyteorder("="))
            end = max(end, start + size)
        reply = bytes(data[end : end + int(header["reply_size"])])
        return cls(
            session_id=header["id"],
            model=header["model"],
            version=header["version"],
            caller=header["caller"],
            top_k=int(header["top_k"]),
            return_tensors=tuple(header["return_tensors"]),
            last_seq=int(header["last_seq"]),
            rows=groups["rows"],
            initial=groups["initial"] if header["has_initial"] else None,
            scratch=groups["scratch"],
            reply_kind=header["reply_kind"],
            reply=reply,
        )
