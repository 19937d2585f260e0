"""The captioner driver: an image opens the session, a Run streams its caption word by word.

Everything about decoding (greedy, sampling, beam; each word with its attention map, until
``<END>``) is the attention decoder's (``service.drivers.attention``); this file only turns the
open's payload into the init graph's ``image`` input and checks it:

* ``InitPayload.data``: PNG or JPEG bytes, decoded here with Pillow. The header is read first
  and nothing is decoded unless it is a PNG or JPEG of the model's size: a decompression bomb
  (a small file that claims a huge image) is refused from its header (RESOURCE_EXHAUSTED,
  ``max_image_pixels``), a wrong size or channel count is INVALID_ARGUMENT. The image must be
  greyscale (one channel, Pillow mode ``L``): a caption of a colour image would silently depend
  on how it was turned grey, so the client converts it and says how;
* ``InitPayload.tensors``: the raw array ``image [H, W]`` float32 in [0, 1].

The payload's size is bounded before any of this by ``--max-init-bytes``.
"""

from __future__ import annotations

import io

import numpy as np

from service.api import statestream_pb2 as pb
from service.contract import Arrays, ContractError, Manifest
from service.drivers.attention import AttentionDecoderDriver
from service.errors import InvalidArgument, ResourceExhausted
from service.tasks import register

TASK = "captioner"
IMAGE_INPUT = "image"
FORMATS = ("PNG", "JPEG")
#: A header claiming more pixels than this many times the model's image is refused before decoding.
BOMB_FACTOR = 16


@register(TASK)
class CaptionDriver(AttentionDecoderDriver):
    init_payload = (
        "a greyscale PNG or JPEG of the model's size (InitPayload.data), or tensors image [H, W] float32 in [0, 1]"
    )

    def __init__(self, manifest: Manifest) -> None:
        super().__init__(manifest)
        assert manifest.init is not None
        self.height, self.width = manifest.init.inputs[0].shape

    @classmethod
    def check_manifest(cls, manifest: Manifest) -> None:
        super().check_manifest(manifest)
        assert manifest.init is not None
        inputs = manifest.init.inputs
        if (
            len(inputs) != 1
            or inputs[0].name != IMAGE_INPUT
            or inputs[0].dtype != "float32"
            or len(inputs[0].shape) != 2
        ):
            raise ContractError(f"a captioner's init graph takes one input, {IMAGE_INPUT!r}: float32 [H, W]")

    def decode_init_bytes(self, data: bytes) -> Arrays:
        from PIL import Image, UnidentifiedImageError

        limit = BOMB_FACTOR * self.width * self.height
        try:
            image = Image.open(io.BytesIO(data), formats=FORMATS)
        except Image.DecompressionBombError:
            raise ResourceExhausted("max_image_pixels", limit, "the image header claims a decompression bomb") from None
        except (UnidentifiedImageError, OSError, ValueError) as exc:
            raise InvalidArgument(f"init data is not a PNG or JPEG image ({exc.__class__.__name__})") from None
        width, height = image.size
        if width * height > limit:
            raise ResourceExhausted(
                "max_image_pixels", limit, f"the image header claims {width}x{height} pixels; not decoded"
            )
        if (height, width) != (self.height, self.width):
            raise InvalidArgument(
                f"the image is {width}x{height} pixels; model {self.manifest.name!r} takes {self.width}x{self.height}"
            )
        if image.mode != "L":
            channels = len(image.getbands())
            raise InvalidArgument(
                f"the image has mode {image.mode} ({channels} channels); the captioner takes greyscale (mode L, 1 channel)"
            )
        try:
            pixels = np.asarray(image, dtype=np.float32)
        except (OSError, ValueError, SyntaxError) as exc:
            raise InvalidArgument(f"the image could not be decoded ({exc})") from None
        return {IMAGE_INPUT: (pixels / 255.0)[np.newaxis]}

    def decode_init_tensors(self, payload: pb.InitPayload) -> Arrays:
        feed = super().decode_init_tensors(payload)
        image = feed[IMAGE_INPUT]
        if image.min() < 0.0 or image.max() > 1.0:
            raise InvalidArgument(f"init tensor {IMAGE_INPUT!r} must hold grey levels in [0, 1]")
        return feed
