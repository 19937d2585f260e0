"""The captioner end to end: export parity, served captions against offline decodes, bad input.

Every serving test runs the real server on a loopback port with real ONNX Runtime on a tiny
untrained captioner (``tests/captioner_model.py``). Tolerances: attention weights and
probabilities compared at 1e-5 (float32 graphs run on batches of different sizes differ by
~1e-7); the exported graphs against PyTorch at the exporter's 1e-4.
"""

from __future__ import annotations

import asyncio
import io
import itertools
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
from PIL import Image

from service.api import statestream_pb2 as pb
from service.client.sdk import AsyncClient, Client, StepFailed
from service.datasets.scenes import CANVAS, MAX_CAPTION_TOKENS, VOCABULARY, Box, Scene, scenes, to_png
from service.drivers.beams import BeamSearch, log_softmax
from service.settings import Settings
from service.tensors import from_proto
from tests.captioner_model import NAME, build, offline_beam
from tests.servers import ServerThread
from training.tasks.captioner.evaluate import Decoded, greedy_captions, pointing_hits

TOLERANCE = 1e-5
MAX_INIT_BYTES = 64 * 1024


@pytest.fixture(scope="module")
def captioner_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("captioner")
    build(root / NAME)
    return root


@pytest.fixture(scope="module")
def caption_server(captioner_dir: Path) -> Iterator[ServerThread]:
    running = ServerThread(Settings(models_dir=captioner_dir, max_init_bytes=MAX_INIT_BYTES))
    yield running
    running.stop()


@pytest.fixture(scope="module")
def images() -> list[np.ndarray]:
    return [s.image for s in scenes("test", 4, seed=11)]


def _served(events: list[pb.RunOutput | pb.RunDone]) -> tuple[list[int], np.ndarray, pb.RunDone]:
    outputs = [e for e in events if isinstance(e, pb.RunOutput)]
    done = events[-1]
    assert isinstance(done, pb.RunDone)
    assert [o.index for o in outputs] == list(range(len(outputs)))
    maps = np.stack([from_proto(o.output.tensors[0]) for o in outputs]) if outputs else np.zeros((0, 64))
    return [o.output.top[0].id for o in outputs], maps, done


async def _caption(client: AsyncClient, image: np.ndarray, beam: int) -> tuple[list[int], np.ndarray, pb.RunDone]:
    session = await client.open(NAME, init=to_png(image))
    events = [e async for e in session.run(MAX_CAPTION_TOKENS, options={"beam": float(beam)})]
    await session.close()
    return _served(events)


def _solo(target: str, image: np.ndarray, beam: int) -> tuple[list[int], np.ndarray, pb.RunDone]:
    async def one() -> tuple[list[int], np.ndarray, pb.RunDone]:
        async with AsyncClient(target) as client:
            return await _caption(client, image, beam)

    return asyncio.run(one())


# -- export --------------------------------------------------------------------------------


def test_the_exported_graphs_pass_their_parity_checks_and_load(captioner_dir: Path) -> None:
    from service.contract import Manifest
    from training.onnx_export import self_check

    manifest = Manifest.load(captioner_dir / NAME)
    assert manifest.training["parity_max_abs_diff"] <= 1e-4  # init and decoder, ONNX vs PyTorch
    assert self_check(captioner_dir / NAME) <= 1e-4  # both golden traces replay


def test_parity_refuses_a_graph_that_is_not_the_net(captioner_dir: Path, tmp_path: Path) -> None:
    import shutil

    import torch

    from service.contract import Manifest
    from training.decoder_export import check_parity
    from training.onnx_export import ParityError
    from training.tasks.captioner.recipe import CaptionerModel
    from training.tasks.captioner.train import build_net, teacher_forcing

    torch.manual_seed(1)  # other weights than the exported ones
    other = build_net(CaptionerModel(channels=4, embed=8, hidden=16, attention=8))
    shutil.copytree(captioner_dir / NAME, tmp_path / NAME)
    chosen = scenes("validation", 2)
    tokens, _ = teacher_forcing([s.caption for s in chosen])
    payload = {"image": np.stack([s.image for s in chosen])}
    with pytest.raises(ParityError, match="init graph"):
        check_parity(
            other.init_graph, other.step_graph, Manifest.load(tmp_path / NAME), tmp_path / NAME, payload, tokens
        )


# -- decoding ------------------------------------------------------------------------------


def test_a_streamed_greedy_caption_equals_the_offline_decode(
    caption_server: ServerThread, captioner_dir: Path, images: list[np.ndarray]
) -> None:
    offline = greedy_captions(captioner_dir / NAME, np.stack(images), MAX_CAPTION_TOKENS)
    reasons = set()
    for image, expected in zip(images, offline, strict=True):
        ids, maps, done = _solo(caption_server.target, image, beam=1)
        assert [VOCABULARY[i] for i in ids] == expected.words
        np.testing.assert_allclose(maps, expected.attention, atol=TOLERANCE)
        assert done.stop_reason == ("end" if len(ids) < MAX_CAPTION_TOKENS else "max_steps")
        reasons.add(done.stop_reason)
    assert "end" in reasons  # <END> is really detected (and not streamed)


@pytest.mark.parametrize("width", [2, 4])
def test_a_streamed_beam_caption_equals_the_offline_beam(
    caption_server: ServerThread, captioner_dir: Path, images: list[np.ndarray], width: int
) -> None:
    for image in images:
        ids, maps, _ = _solo(caption_server.target, image, beam=width)
        expected_ids, expected_maps = offline_beam(captioner_dir / NAME, image, width, MAX_CAPTION_TOKENS)
        assert ids == expected_ids
        np.testing.assert_allclose(maps, expected_maps.reshape(maps.shape), atol=TOLERANCE)


def test_attention_weights_sum_to_one(caption_server: ServerThread, images: list[np.ndarray]) -> None:
    _, maps, _ = _solo(caption_server.target, images[0], beam=1)
    assert len(maps) > 0
    np.testing.assert_allclose(maps.sum(axis=1), 1.0, atol=TOLERANCE)
    assert (maps >= 0).all()


def test_concurrent_captions_each_equal_their_solo_decode(
    caption_server: ServerThread, images: list[np.ndarray]
) -> None:
    jobs = list(itertools.product(range(len(images)), (1, 3)))
    solo = {(i, beam): _solo(caption_server.target, images[i], beam) for i, beam in jobs}
    registry = caption_server.server.metrics.registry
    labels = {"model": NAME}
    batches_before = registry.get_sample_value("statestream_batch_size_count", labels) or 0.0
    rows_before = registry.get_sample_value("statestream_batch_size_sum", labels) or 0.0

    async def together() -> list[tuple[list[int], np.ndarray, pb.RunDone]]:
        async with AsyncClient(caption_server.target) as client:
            return list(await asyncio.gather(*(_caption(client, images[i], beam) for i, beam in jobs)))

    results = asyncio.run(together())
    batches = (registry.get_sample_value("statestream_batch_size_count", labels) or 0.0) - batches_before
    rows = (registry.get_sample_value("statestream_batch_size_sum", labels) or 0.0) - rows_before
    for (i, beam), (ids, maps, _) in zip(jobs, results, strict=True):
        assert ids == solo[(i, beam)][0]
        np.testing.assert_allclose(maps, solo[(i, beam)][1], atol=TOLERANCE)
    assert rows / batches > 1.5  # the decodes, beams included, shared batches


def test_sampling_is_reproducible_from_its_seed(caption_server: ServerThread, images: list[np.ndarray]) -> None:
    with Client(caption_server.target) as client:
        session = client.open(NAME, init=to_png(images[0]))
        runs = [
            list(session.run(MAX_CAPTION_TOKENS, options={"temperature": 1.5}, seed=seed)) for seed in (5, 5, 6, 7, 8)
        ]
    captions = [_served(run)[0] for run in runs]
    assert captions[0] == captions[1]
    assert runs[0][-1].seed == 5
    assert len({tuple(c) for c in captions}) > 1  # other seeds draw other captions


def test_beam_search_finds_the_most_likely_sequence_when_wide_enough() -> None:
    """With the width of the whole tree, beam search is exhaustive: its answer is the most likely
    finished sequence, found here by enumerating every sequence of a toy conditional model."""
    vocabulary, end, depth = 3, 2, 4
    rng = np.random.default_rng(3)
    table = {prefix: log_softmax(rng.normal(size=(1, vocabulary)) * 2)[0] for prefix in _prefixes(vocabulary, depth)}
    search = BeamSearch(vocabulary**depth, end)
    for _ in range(depth):
        rows = np.stack([table[tuple(h.tokens)] for h in search.live])
        search.advance(rows, [np.zeros(1)] * len(rows))
        if search.done:
            break
    best = max(
        (seq for seq in _prefixes(vocabulary, depth + 1) if seq and seq[-1] == end and end not in seq[:-1]),
        key=lambda seq: sum(table[seq[:k]][seq[k]] for k in range(len(seq))),
    )
    assert tuple(search.best().tokens) == best


def _prefixes(vocabulary: int, depth: int) -> list[tuple[int, ...]]:
    return [p for n in range(depth) for p in itertools.product(range(vocabulary), repeat=n)]


def test_a_client_may_drive_the_decoder_one_word_per_step(
    caption_server: ServerThread, captioner_dir: Path, images: list[np.ndarray]
) -> None:
    first = greedy_captions(captioner_dir / NAME, images[0][None], 1)[0].attention[0]
    start = VOCABULARY.index("<START>")
    with Client(caption_server.target) as client:
        session = client.open(NAME, init=to_png(images[0]), return_tensors=["attention"])
        result = session.step(tensors={"word": np.array([start], np.int64)})
        np.testing.assert_allclose(from_proto(result.outputs[0].tensors[0]), first, atol=TOLERANCE)
        for words, message in (([start, start], "one token per step"), ([len(VOCABULARY)], "outside the vocabulary")):
            with pytest.raises(StepFailed) as raised:
                session.step(tensors={"word": np.array(words, np.int64)})
            assert raised.value.error.code_name == "INVALID_ARGUMENT" and message in raised.value.error.message


# -- the pointing metric -------------------------------------------------------------------


def test_pointing_counts_a_digit_word_whose_attention_peak_is_inside_its_box() -> None:
    scene = Scene(
        np.zeros((CANVAS, CANVAS), np.float32),
        "a 3 to the left of a 7",
        (3, 7),
        (Box(top=20, left=0, size=20), Box(top=20, left=40, size=20)),
    )
    words = ["a", "3", "to", "the", "left", "of", "a", "7", "a", "1"]
    attention = np.full((len(words), 64), 0.1 / 63, np.float32)
    # the 8x8 grid's cells are 8 px: location 3*8+1 has its centre at (28, 12), inside the 3's box;
    # location 3*8+2 at (28, 20), left of the 7's box (which starts at column 40): a miss.
    attention[1, 3 * 8 + 1] = 0.9
    attention[7, 3 * 8 + 2] = 0.9
    attention[9, 3 * 8 + 6] = 0.9  # a third digit word: the scene has no third digit, a miss
    assert pointing_hits(scene, Decoded(words, attention)) == (1, 3)


# -- bad input -----------------------------------------------------------------------------


def _png(array: np.ndarray, mode: str) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array, mode=mode).save(buffer, format="PNG")
    return buffer.getvalue()


def _bomb() -> bytes:
    """A small PNG (a few KB) whose header claims 4000x4000 pixels."""
    buffer = io.BytesIO()
    Image.new("L", (4000, 4000)).save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()


def _open_fails(target: str, init: pb.InitPayload) -> grpc.aio.AioRpcError:
    async def attempt() -> None:
        async with AsyncClient(target) as client:
            await client.start_raw(pb.SessionRequest(open=pb.OpenSession(model=NAME, init=init)), resume_timeout_s=1.0)

    with pytest.raises(grpc.aio.AioRpcError) as raised:
        asyncio.run(attempt())
    return raised.value


NOISE = np.random.default_rng(0).integers(0, 256, (CANVAS, CANVAS), dtype=np.uint8)  # compresses badly: a long PNG


@pytest.mark.parametrize(
    ("data", "code", "message"),
    [
        (b"this is not an image at all", "INVALID_ARGUMENT", "not a PNG or JPEG image"),
        (_png(NOISE, "L")[:2000], "INVALID_ARGUMENT", "could not be decoded"),
        (_png(np.zeros((32, 48), np.uint8), "L"), "INVALID_ARGUMENT", "the image is 48x32 pixels; model"),
        (_png(np.zeros((CANVAS, CANVAS, 3), np.uint8), "RGB"), "INVALID_ARGUMENT", "mode RGB (3 channels)"),
        (_bomb(), "RESOURCE_EXHAUSTED", "max_image_pixels"),
        (b"\x89PNG" + bytes(MAX_INIT_BYTES), "RESOURCE_EXHAUSTED", "max_init_bytes"),
    ],
    ids=["not-an-image", "truncated", "wrong-size", "three-channels", "decompression-bomb", "oversized"],
)
def test_a_bad_image_is_refused_and_other_sessions_are_undisturbed(
    caption_server: ServerThread, images: list[np.ndarray], data: bytes, code: str, message: str
) -> None:
    with Client(caption_server.target) as client:
        other = client.open(NAME, init=to_png(images[1]))
        before_ids = _served(list(other.run(MAX_CAPTION_TOKENS)))[0]
        sessions = len(caption_server.server.store)
        error = _open_fails(caption_server.target, pb.InitPayload(data=data))
        assert error.code().name == code
        assert message in (error.details() or "")
        assert len(caption_server.server.store) == sessions  # nothing opened
        assert _served(list(other.run(MAX_CAPTION_TOKENS)))[0] == before_ids  # the other session decodes as before


def test_a_raw_array_opens_a_session_and_out_of_range_values_are_refused(
    caption_server: ServerThread, images: list[np.ndarray]
) -> None:
    with Client(caption_server.target) as client:
        from_array = _served(list(client.open(NAME, init={"image": images[2]}).run(MAX_CAPTION_TOKENS)))[0]
        from_png = _served(list(client.open(NAME, init=to_png(images[2])).run(MAX_CAPTION_TOKENS)))[0]
    assert from_array == from_png  # the scenes are 8-bit grey levels: the PNG is exact
    error = _open_fails(caption_server.target, pb.InitPayload(tensors=[_tensor(images[0] * 2)]))
    assert error.code().name == "INVALID_ARGUMENT" and "[0, 1]" in (error.details() or "")


def _tensor(value: np.ndarray) -> pb.Tensor:
    from service.tensors import to_proto

    return to_proto("image", value.astype(np.float32))


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"beam": 0.0}, "beam must be a whole number in 1..16"),
        ({"beam": 2.5}, "beam must be a whole number"),
        ({"beam": 3.0, "temperature": 1.0}, "not both"),
        ({"temperature": -1.0}, "temperature must be a finite number >= 0"),
    ],
)
def test_bad_decoding_options_are_refused_in_the_stream(
    caption_server: ServerThread, images: list[np.ndarray], options: dict[str, float], message: str
) -> None:
    with Client(caption_server.target) as client:
        session = client.open(NAME, init=to_png(images[0]))
        with pytest.raises(StepFailed) as raised:
            list(session.run(5, options=options))
        assert raised.value.error.code_name == "INVALID_ARGUMENT" and message in raised.value.error.message
        assert len(_served(list(session.run(3)))[0]) <= 3  # the session still decodes


# -- the command line ----------------------------------------------------------------------


def test_client_caption_prints_json_and_draws_one_overlay_per_word(
    caption_server: ServerThread,
    captioner_dir: Path,
    images: list[np.ndarray],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    import json

    from service.client.commands import main

    image = tmp_path / "scene.png"
    image.write_bytes(to_png(images[0]))
    overlay = tmp_path / "attention.png"
    argv = ["--target", caption_server.target, "caption", "--model", NAME, "--image", str(image)]
    assert main([*argv, "--json", "--attention-png", str(overlay), "--beam", "2"]) == 0
    answer = json.loads(capsys.readouterr().out)
    expected_ids, _ = offline_beam(captioner_dir / NAME, images[0], 2, 32)
    assert len(answer["words"]) == len(expected_ids)
    with Image.open(overlay) as drawn:
        assert drawn.size[0] == 3 * CANVAS * (1 + len(answer["words"]))  # the image, then one panel per word


def test_scenes_command_writes_pngs_with_their_captions(tmp_path: Path) -> None:
    import json

    from service.scenes_command import main

    assert main(["--out", str(tmp_path), "--count", "3", "--seed", "2"]) == 0
    index = json.loads((tmp_path / "scenes.json").read_text())
    expected = scenes("test", 3, seed=2)
    assert [entry["caption"] for entry in index] == [s.caption for s in expected]
    for entry, scene in zip(index, expected, strict=True):
        with Image.open(tmp_path / entry["file"]) as png:
            np.testing.assert_array_equal(np.asarray(png, np.float32) / 255, scene.image)


def test_scenes_out_that_is_a_file_or_under_one_is_one_usage_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """It was a traceback (FileExistsError, NotADirectoryError) from the folder's mkdir."""
    from service import command
    from service.scenes_command import main

    a_file = tmp_path / "file"
    a_file.write_text("x")
    for out, says in [
        (a_file, f"--out {a_file} is a file"),
        (a_file / "sub", f"--out {a_file / 'sub'}: {a_file} is a file"),
    ]:
        assert command.run(lambda out=out: main(["--out", str(out)])) == command.EXIT_USAGE
        assert capsys.readouterr().err == f"statestream: error: {says}, not a folder\n"


# -- training options ------------------------------------------------------------------------


def test_annotations_with_coordinates_carry_where_each_location_is() -> None:
    from training.tasks.captioner.net import ConvEncoder

    torch = pytest.importorskip("torch")
    encoder = ConvEncoder((4, 4, 4), coordinates=True, canvas=CANVAS)
    plain = ConvEncoder((4, 4, 4), coordinates=False, canvas=CANVAS)
    plain.load_state_dict(encoder.state_dict())
    images = torch.rand(3, CANVAS, CANVAS)
    annotations = encoder(images)
    assert annotations.shape == (3, 64, 6)
    torch.testing.assert_close(annotations[..., :4], plain(images))  # the CNN's features are unchanged
    where = annotations[..., 4:]
    torch.testing.assert_close(where[0], where[2])  # the same for every image
    # row-major over the 8x8 grid: location 0 is the top left corner, 7 the top right, 63 the bottom right
    assert where[0, 0].tolist() == [-1.0, -1.0]
    assert where[0, 7].tolist() == [-1.0, 1.0]
    assert where[0, 63].tolist() == [1.0, 1.0]


def test_location_labels_name_the_digit_and_size_whose_box_holds_each_location() -> None:
    from training.tasks.captioner.train import location_labels

    scene = Scene(
        np.zeros((CANVAS, CANVAS), np.float32),
        "a large 3 to the left of a small 7",
        (3, 7),
        (Box(top=20, left=0, size=20), Box(top=24, left=40, size=12)),
    )
    labels = location_labels([scene], 64)[0].reshape(8, 8)
    # cell centres are at 8k + 4: the 3's rows 20..39 hold centres 20, 28 and 36 (grid rows 2-4),
    # its columns 0..19 hold 4 and 12 (grid columns 0, 1); the 7 (24..35 by 40..51) holds (28, 44)
    expected = np.zeros((8, 8), np.int64)
    expected[2:5, 0:2] = 11 + 3  # large
    expected[3, 5] = 1 + 7  # small
    np.testing.assert_array_equal(labels, expected)


def test_training_with_the_location_loss_trains_a_head_it_does_not_keep(tmp_path: Path) -> None:
    from training.checkpoints import load_weights
    from training.tasks import TrainOptions
    from training.tasks.captioner.recipe import CaptionerModel, CaptionerRecipe, CaptionerTrain
    from training.tasks.captioner.train import build_net, train

    model = CaptionerModel(channels=4, embed=8, hidden=16, attention=8, coordinates=True)
    recipe = CaptionerRecipe(
        name="tiny",
        task="captioner",
        out=str(tmp_path),
        description="",
        model=model,
        train=CaptionerTrain(scenes=32, steps=4, batch=8, eval_every=2, val_scenes=8, locations=1.0),
    )
    summary = train(recipe, TrainOptions(recipe_file=Path("tiny.toml"), progress=False))
    assert summary["steps"] == 4
    weights = load_weights(tmp_path / "weights.pt")
    assert set(weights.model) == set(build_net(model).state_dict())  # the auxiliary head is not saved
