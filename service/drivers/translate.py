"""The translator driver: a text opens the session, a Run streams its translation character by character.

Decoding (greedy, sampling, beam; each output character with its attention over the input's
characters, until the end token) is the attention decoder's (``service.drivers.attention``);
this file only turns the open's payload into the init graph's inputs:

* ``InitPayload.data``: the text, UTF-8. It is checked before anything runs: not UTF-8, empty,
  longer than ``decoding.max_input_chars`` characters, or holding a character outside
  ``decoding.source_vocabulary`` is INVALID_ARGUMENT, and the message names the problem (the
  characters, the lengths); no session is opened;
* the text becomes ``chars [L]`` (source ids, 0-padded to ``L``) and ``chars_mask [L]`` (1 at
  the characters). Raw init tensors are refused: ids and a mask that disagree would decode
  garbage without any error.

Every streamed character's attention has ``L`` weights, one per input position, 0 past the text.
"""

from __future__ import annotations

import numpy as np

from service.api import statestream_pb2 as pb
from service.contract import Arrays, ContractError, Manifest
from service.drivers.attention import AttentionDecoderDriver
from service.errors import InvalidArgument
from service.tasks import register

TASK = "translator"
CHARS_INPUT, MASK_INPUT = "chars", "chars_mask"
#: Characters of an offending text quoted back in an error message, at most.
QUOTED_CHARS = 8


@register(TASK)
class TranslateDriver(AttentionDecoderDriver):
    init_payload = "the text to translate, UTF-8 (InitPayload.data), at most decoding.max_input_chars characters"

    def __init__(self, manifest: Manifest) -> None:
        super().__init__(manifest)
        assert manifest.init is not None
        self.max_chars = manifest.init.inputs[0].shape[0]
        self.source_ids = {ch: i for i, ch in enumerate(manifest.decoding["source_vocabulary"]) if i > 0}

    @classmethod
    def check_manifest(cls, manifest: Manifest) -> None:
        super().check_manifest(manifest)
        assert manifest.init is not None
        names = [(t.name, t.dtype, len(t.shape)) for t in manifest.init.inputs]
        if names != [(CHARS_INPUT, "int64", 1), (MASK_INPUT, "float32", 1)]:
            raise ContractError(
                f"a translator's init graph takes {CHARS_INPUT!r} int64 [L] and {MASK_INPUT!r} float32 [L]"
            )
        source = manifest.decoding.get("source_vocabulary")
        if not isinstance(source, list) or len(source) < 2 or not all(isinstance(s, str) for s in source):
            raise ContractError("a translator's manifest needs decoding.source_vocabulary (id 0 is padding)")

    def decode_init(self, payload: pb.InitPayload, max_init_bytes: int, has_restore: bool) -> Arrays | None:
        # An empty text is an empty payload on the wire: say so in the translator's words.
        if payload.ByteSize() == 0 and not has_restore:
            raise InvalidArgument(
                f"the text is empty: model {self.manifest.name!r} translates 1 to {self.max_chars} characters"
            )
        return super().decode_init(payload, max_init_bytes, has_restore)

    def decode_init_bytes(self, data: bytes) -> Arrays:
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise InvalidArgument(f"the text is not UTF-8 (byte {exc.start})") from None
        if not text:
            raise InvalidArgument("the text is empty")
        if len(text) > self.max_chars:
            raise InvalidArgument(
                f"the text has {len(text)} characters; model {self.manifest.name!r} reads at most {self.max_chars}"
            )
        unknown = sorted({ch for ch in text if ch not in self.source_ids})
        if unknown:
            shown = "".join(unknown[:QUOTED_CHARS]) + ("..." if len(unknown) > QUOTED_CHARS else "")
            raise InvalidArgument(
                f"the text has {len(unknown)} character(s) outside the vocabulary of model {self.manifest.name!r}: {shown!r}"
            )
        chars = np.zeros((1, self.max_chars), np.int64)
        chars[0, : len(text)] = [self.source_ids[ch] for ch in text]
        return {CHARS_INPUT: chars, MASK_INPUT: (chars != 0).astype(np.float32)}

    def decode_init_tensors(self, payload: pb.InitPayload) -> Arrays:
        raise InvalidArgument(f"model {self.manifest.name!r} takes the text as InitPayload.data (UTF-8), not tensors")
