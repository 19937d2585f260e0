"""The voice-activity driver: audio in as a live call sends it, speech probabilities and events out.

Silero VAD (``models/silero_vad``) judges frames of exactly 512 samples at 16 kHz (256 at 8 kHz),
but calls send what their transport carries: 20 ms telephony frames of 320 samples, 32 ms chunks,
a whole file. So a chunk (one tensor ``audio``, PCM16 or float32, any length) is joined to what
the session buffered in its scratch, and every completed frame is one model step through the
scheduler (the frames of all calls share batches). A live call's chunk is a plain ``Step``
(``decode_session_step``: the cheap path; a chunk short of a frame makes no model call) answered
by one StepOutput per frame; a ``Run`` takes the same chunk with options (threshold, ...), which
stay set for the session's later chunks. A per-session state machine turns the probabilities
into speech events exactly as silero-vad's ``VADIterator`` does (``SpeechTracker``). Either
request is one seq, applied entirely or not at all: the buffer and the tracker are written only
once the chunk's frames have run. docs/vad.md is the user's page.
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from service.answer_bytes import OutputTensors, length_delimited, step_result
from service.api import statestream_pb2 as pb
from service.contract import Arrays, ContractError, Manifest, TensorSpec
from service.drivers import bounds
from service.drivers.base import Driver
from service.drivers.loops import Loop, LoopContext
from service.drivers.session_view import SessionView
from service.drivers.steps import StepHeader, StepInputs
from service.errors import InvalidArgument, ResourceExhausted
from service.session_options import ResolvedOptions
from service.tasks import register
from service.tensors import add_proto

TASK = "voice_activity"
#: The Run's one tensor, and the names of what each frame's answer holds.
AUDIO, PROBABILITY, EVENT_SAMPLE = "audio", "speech_probability", "sample"
SPEECH_START, SPEECH_END = "speech_start", "speech_end"
#: Silero's frame for each rate it takes (its OnnxWrapper refuses any other length).
FRAME_SAMPLES = {16000: 512, 8000: 256}
#: PCM16 full scale: a sample s becomes s / 32768 in [-1, 1), as torchaudio and soundfile read it.
PCM16_SCALE = 32768.0
#: VADIterator's speech-end threshold is its threshold less this (``neg_threshold`` overrides it).
NEG_THRESHOLD_OFFSET = 0.15
#: Scratch keys: samples waiting for a frame; the tracker's counters; the options set so far.
PENDING, TRACKER, OPTIONS = "vad_pending", "vad_tracker", "vad_options"
#: A session's tracker counters (triggered, temp_end, current_sample) before its first frame.
NO_EVENTS_YET = np.zeros(3, np.int64)
#: Longest padding or minimum silence an option may ask for, in ms.
MAX_DURATION_MS = 60_000.0
#: The most bytes one frame's answer holds: its probability, an event's sample and its label.
FRAME_ANSWER_BYTES = bounds.tensor(PROBABILITY, (), np.float32) + bounds.tensor(EVENT_SAMPLE, (), np.int64) + 24

RUN_OPTIONS: dict[str, tuple[float, str]] = {
    "sample_rate": (16000.0, "the audio's rate in Hz; must be the model's (the manifest's decoding.sample_rate)"),
    "threshold": (0.5, "a frame with probability >= threshold is speech (VADIterator's threshold), in (0, 1)"),
    "neg_threshold": (
        0.5 - NEG_THRESHOLD_OFFSET,
        "speech ends after frames below it; default threshold - 0.15 (VADIterator's), in [0, threshold]",
    ),
    "min_silence_duration_ms": (100.0, "silence that must pass before speech ends, in ms"),
    "speech_pad_ms": (30.0, "each segment is widened by this on both sides, in ms"),
}


@dataclass(frozen=True)
class VadOptions:
    """A session's speech-event options, as VADIterator takes them."""

    threshold: float = 0.5
    #: None: ``threshold - 0.15``, following the threshold when that changes.
    neg_threshold: float | None = None
    min_silence_duration_ms: float = 100.0
    speech_pad_ms: float = 30.0

    @property
    def speech_end_below(self) -> float:
        return self.threshold - NEG_THRESHOLD_OFFSET if self.neg_threshold is None else self.neg_threshold

    def as_array(self) -> np.ndarray:
        neg = math.nan if self.neg_threshold is None else self.neg_threshold
        return np.array([self.threshold, neg, self.min_silence_duration_ms, self.speech_pad_ms], np.float64)

    @classmethod
    def from_array(cls, values: np.ndarray) -> VadOptions:
        threshold, neg, silence, pad = (float(v) for v in values)
        return cls(threshold, None if math.isnan(neg) else neg, silence, pad)

    def updated(self, given: Mapping[str, float]) -> VadOptions:
        """These options with those a Run names replaced, checked; INVALID_ARGUMENT names a bad one."""
        threshold = float(given.get("threshold", self.threshold))
        neg = float(given["neg_threshold"]) if "neg_threshold" in given else self.neg_threshold
        new = VadOptions(
            threshold,
            neg,
            float(given.get("min_silence_duration_ms", self.min_silence_duration_ms)),
            float(given.get("speech_pad_ms", self.speech_pad_ms)),
        )
        if not 0.0 < threshold < 1.0:
            raise InvalidArgument(f"option threshold is {threshold:g}; it must be in (0, 1)")
        if neg is not None and not 0.0 <= neg <= threshold:
            raise InvalidArgument(f"option neg_threshold is {neg:g}; it must be in [0, threshold {threshold:g}]")
        for name in ("min_silence_duration_ms", "speech_pad_ms"):
            value = getattr(new, name)
            if not 0.0 <= value <= MAX_DURATION_MS:
                raise InvalidArgument(f"option {name} is {value:g}; it must be in [0, {MAX_DURATION_MS:g}] ms")
        return new


class SpeechTracker:
    """VADIterator's state machine, over one session's counters (``triggered, temp_end, current_sample``).

    Per frame of ``window`` samples with probability p (silero-vad's utils_vad.VADIterator):
    the sample count advances by ``window``; p >= threshold cancels a pending end and, outside
    speech, starts speech at ``max(0, current - pad - window)``; inside speech, p < neg_threshold
    marks ``temp_end = current`` (once) and ends speech at ``temp_end + pad - window`` as soon as
    ``current - temp_end >= min_silence``, where pad and min_silence are the options in samples.
    """

    def __init__(self, counters: np.ndarray, options: VadOptions, sample_rate: int, window: int) -> None:
        self.triggered, self.temp_end, self.current = (int(v) for v in counters)
        self.threshold = options.threshold
        self.below = options.speech_end_below
        self.min_silence = sample_rate * options.min_silence_duration_ms / 1000
        self.pad = sample_rate * options.speech_pad_ms / 1000
        self.window = window

    def counters(self) -> np.ndarray:
        return np.array([self.triggered, self.temp_end, self.current], np.int64)

    def frame(self, probability: float) -> tuple[str, int] | None:
        """The event this frame's probability makes (its name and sample), if any."""
        self.current += self.window
        if probability >= self.threshold and self.temp_end:
            self.temp_end = 0
        if probability >= self.threshold and not self.triggered:
            self.triggered = 1
            return SPEECH_START, int(max(0, self.current - self.pad - self.window))
        if probability < self.below and self.triggered:
            if not self.temp_end:
                self.temp_end = self.current
            if self.current - self.temp_end < self.min_silence:
                return None
            end = int(self.temp_end + self.pad - self.window)
            self.temp_end = 0
            self.triggered = 0
            return SPEECH_END, end
        return None


@register(TASK)
class VoiceActivityDriver(Driver):
    sends = (
        "a chunk of audio per Step (a live call's path) or per Run (with options): tensor audio [N], "
        "PCM16 (int16) or float32 in [-1, 1], any N; samples short of a frame wait for the next chunk"
    )
    returns = (
        "per completed frame, a StepOutput (in a Step's StepResult, or a Run's RunOutput): "
        "speech_probability []; label speech_start/speech_end with sample []"
    )
    run = (
        "feeds one chunk of audio: the samples buffered from earlier chunks and this chunk's are cut "
        "into the model's frames (512 samples at 16 kHz); each completed frame is stepped and "
        "answered with its speech probability and any speech event (silero-vad's VADIterator); the "
        "rest waits for the next chunk. max_steps must cover the frames completed (N // frame + 1 "
        "always does). Options stay set for the session's later chunks (Steps and Runs)."
    )
    run_options = RUN_OPTIONS

    def __init__(self, manifest: Manifest) -> None:
        super().__init__(manifest)
        self.audio_input = manifest.inputs[0].name
        self.frame_samples = manifest.inputs[0].shape[0]
        self.probability_output = manifest.outputs[0].name
        self.sample_rate = sample_rate_of(manifest)
        self.frame_answers = FrameAnswers()

    def task_info(self) -> pb.TaskInfo:
        """As the base says, with this model's rate as ``sample_rate``'s default (clients read it there)."""
        info = super().task_info()
        for option in info.run_options:
            if option.name == "sample_rate":
                option.default = float(self.sample_rate)
        return info

    @classmethod
    def check_manifest(cls, manifest: Manifest) -> None:
        if len(manifest.inputs) != 1 or manifest.inputs[0].dtype != "float32" or len(manifest.inputs[0].shape) != 1:
            raise ContractError("a voice-activity model takes one input, a float32 frame of samples [frame]")
        if len(manifest.outputs) != 1 or math.prod(manifest.outputs[0].shape) != 1:
            raise ContractError("a voice-activity model has one output, its speech probability (one value)")
        if manifest.decoding.get("steps_per_call", 1) != 1:
            raise ContractError("a voice-activity graph takes one frame per call (decoding.steps_per_call 1)")
        rate = sample_rate_of(manifest)
        if FRAME_SAMPLES[rate] != manifest.inputs[0].shape[0]:
            raise ContractError(f"at {rate} Hz the model's frame is {FRAME_SAMPLES[rate]} samples")

    def decode_step(self, step: pb.Step, max_chunk: int) -> StepInputs:
        """Without its session a chunk cannot be cut into frames (the engine calls ``decode_session_step``)."""
        raise InvalidArgument(f"model {self.manifest.name!r} takes audio only in a session's Steps and Runs")

    def decode_session_step(self, session: SessionView, step: pb.Step, max_chunk: int) -> StepInputs:
        """A live call's chunk: the buffered samples and the Step's ``audio``, cut into frames.

        Changes nothing (``encode_session_result`` writes the buffer once the frames have run);
        a chunk that completes no frame is 0 model steps, applied without a model call."""
        if step.WhichOneof("input") != "tensors":
            raise InvalidArgument(
                f"model {self.manifest.name!r} takes audio: send tensors with one tensor {AUDIO!r} (PCM16 or float32 [N])"
            )
        if step.last_only:
            raise InvalidArgument("last_only is not taken: a voice-activity step answers every frame (its events)")
        samples = self._joined(session, decode_audio(step.tensors, self.frame_samples * max_chunk))
        frames = len(samples) // self.frame_samples
        completed = samples[: frames * self.frame_samples].reshape(frames, self.frame_samples)
        return AudioStep({self.audio_input: completed}, frames, rest=samples[frames * self.frame_samples :].copy())

    def encode_session_result(
        self, session: SessionView, step: StepHeader, decoded: StepInputs, outputs: Arrays
    ) -> bytes:
        """One StepOutput per frame (probability, event), and the session's buffer and tracker moved on."""
        assert isinstance(decoded, AudioStep)
        scratch = session.scratch
        answers: list[bytes] = []
        if decoded.steps:
            tracker = self.tracker_of(session, self.options_of(session))
            probabilities = outputs[self.probability_output].reshape(-1)
            encode, frame = self.frame_answers.encode, tracker.frame
            answers = [encode(probabilities, t, frame(float(p))) for t, p in enumerate(probabilities)]
            scratch[TRACKER] = tracker.counters()
        scratch[PENDING] = decoded.rest  # replaced, never changed in place (checkpoints hold the old)
        return step_result(step.seq, answers)

    def output_bytes_bound(self, options: ResolvedOptions) -> int:
        return bounds.STEP_OUTPUT_FRAMING + FRAME_ANSWER_BYTES

    def plan_run(self, session: SessionView, request: pb.Run, limits: bounds.Limits) -> Loop:
        """Checks the chunk and the options; nothing has changed when this raises."""
        self.check_run_steps(request, limits)
        self.run_options_of(request)  # an unknown option is refused by name
        rate = request.options.get("sample_rate", float(self.sample_rate))
        if rate != self.sample_rate:
            raise InvalidArgument(
                f"audio at sample_rate {rate:g} Hz: model {self.manifest.name!r} takes {self.sample_rate} Hz; "
                "resample the audio, or serve a model imported for that rate"
            )
        options = self.options_of(session).updated(request.options)
        samples = self._joined(session, decode_audio(request.tensors, self.frame_samples * limits.max_chunk))
        frames = len(samples) // self.frame_samples
        if frames > request.max_steps:
            raise InvalidArgument(
                f"the chunk completes {frames} frame(s) but max_steps is {request.max_steps}; "
                f"set max_steps to at least {frames} (samples // {self.frame_samples} + 1 always suffices)"
            )
        limits.check_fits(bounds.run_output(bounds.STEP_OUTPUT_FRAMING + FRAME_ANSWER_BYTES), "one audio frame", "")
        return ChunkLoop(request.seq, self, samples, options)

    # -- the session's scratch -----------------------------------------------------------

    @staticmethod
    def options_of(session: SessionView) -> VadOptions:
        stored = session.scratch.get(OPTIONS)
        return VadOptions() if stored is None else VadOptions.from_array(stored)

    def tracker_of(self, session: SessionView, options: VadOptions) -> SpeechTracker:
        counters = session.scratch.get(TRACKER, NO_EVENTS_YET)
        return SpeechTracker(counters, options, self.sample_rate, self.frame_samples)

    @staticmethod
    def _joined(session: SessionView, audio: np.ndarray) -> np.ndarray:
        """The samples buffered from earlier chunks, then ``audio``."""
        pending = session.scratch.get(PENDING)
        return audio if pending is None or not len(pending) else np.concatenate([pending, audio])


@dataclass
class AudioStep(StepInputs):
    """A chunk cut into frames (``arrays``: ``[frames, frame]``), and the samples left for the next."""

    rest: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))


class FrameAnswers:
    """A frame's StepOutput as bytes: what ``frame_output``'s message serializes to, its parts made once."""

    def __init__(self) -> None:
        self.tensors = OutputTensors([TensorSpec(PROBABILITY, "float32", ()), TensorSpec(EVENT_SAMPLE, "int64", ())])
        self.labels = {name: length_delimited(4, name.encode()) for name in (SPEECH_START, SPEECH_END)}

    def encode(self, probabilities: np.ndarray, t: int, event: tuple[str, int] | None) -> bytes:
        """Frame ``t``'s answer: its probability (of the chunk's ``[frames]`` float32), and its event."""
        answer = self.tensors.encode((PROBABILITY,), {PROBABILITY: probabilities}, t)
        assert answer is not None  # a float32 scalar, as the spec says
        if event is None:
            return answer
        sample = self.tensors.encode((EVENT_SAMPLE,), {EVENT_SAMPLE: np.array([event[1]], np.int64)}, 0)
        assert sample is not None
        return answer + sample + self.labels[event[0]]


def sample_rate_of(manifest: Manifest) -> int:
    """The model's rate: the manifest's ``decoding.sample_rate``, else Silero's rate for its frame size."""
    given = manifest.decoding.get("sample_rate")
    if given is None:
        by_frame = {frame: rate for rate, frame in FRAME_SAMPLES.items()}
        frame = manifest.inputs[0].shape[0] if manifest.inputs and manifest.inputs[0].shape else 0
        if frame not in by_frame:
            raise ContractError(
                f"a voice-activity model's frame is {sorted(by_frame)} samples, or give decoding.sample_rate"
            )
        return by_frame[frame]
    if given not in FRAME_SAMPLES:
        raise ContractError(
            f"decoding.sample_rate {given!r}: a voice-activity model runs at {sorted(FRAME_SAMPLES)} Hz"
        )
    return int(given)


def decode_audio(tensors: pb.TensorInput, max_samples: int) -> np.ndarray:
    """A chunk's ``audio`` tensor as float32 samples; INVALID_ARGUMENT or RESOURCE_EXHAUSTED naming the problem."""
    if [t.name for t in tensors.tensors] != [AUDIO]:
        names = [t.name for t in tensors.tensors]
        raise InvalidArgument(f"a voice-activity chunk carries one tensor, {AUDIO!r}; got {names}")
    tensor = tensors.tensors[0]
    data = tensor.data
    if tensor.dtype == pb.DATA_TYPE_INT16:
        if len(data) % 2:
            raise InvalidArgument(f"PCM16 audio has an odd byte count ({len(data)}): each sample is 2 bytes")
        dtype: np.dtype[Any] = np.dtype("<i2")
    elif tensor.dtype == pb.DATA_TYPE_FLOAT32:
        if len(data) % 4:
            raise InvalidArgument(f"float32 audio has {len(data)} bytes, not a multiple of 4")
        dtype = np.dtype("<f4")
    else:
        raise InvalidArgument(f"audio must be PCM16 (DATA_TYPE_INT16) or float32, not DataType {tensor.dtype}")
    count = len(data) // dtype.itemsize
    if count == 0:
        raise InvalidArgument("the audio chunk is empty: send at least one sample")
    if list(tensor.shape) not in ([count], []):
        raise InvalidArgument(f"audio has shape {list(tensor.shape)} but {count} samples: send it as [{count}]")
    if count > max_samples:
        raise ResourceExhausted("max_chunk", max_samples, f"the audio chunk holds {count} samples (max_chunk frames)")
    samples = np.frombuffer(data, dtype)
    if dtype.kind == "i":
        return (samples / np.float32(PCM16_SCALE)).astype(np.float32, copy=False)
    if not np.isfinite(samples).all():
        raise InvalidArgument("the audio holds NaN or Inf samples")
    return samples.astype(np.float32)


class ChunkLoop(Loop):
    """Steps each completed frame of a chunk, answering its probability and events as it goes."""

    def __init__(self, seq: int, driver: VoiceActivityDriver, samples: np.ndarray, options: VadOptions) -> None:
        super().__init__(seq)
        self.driver = driver
        self.samples = samples
        self.options = options
        self.answer = pb.RunDone(seq=seq, stop_reason="chunk")

    async def run(self, context: LoopContext) -> AsyncIterator[pb.SessionResponse]:
        driver, scratch = self.driver, context.session.scratch
        frame = driver.frame_samples
        tracker = driver.tracker_of(context.session, self.options)
        frames = len(self.samples) // frame
        for index in range(frames):
            step = StepInputs({driver.audio_input: self.samples[index * frame : (index + 1) * frame][None]}, 1)
            outputs: Arrays = await context.step(step)
            probability = np.float32(outputs[driver.probability_output].reshape(-1)[0])
            event = tracker.frame(float(probability))
            yield pb.SessionResponse(
                run_output=pb.RunOutput(seq=self.seq, index=index, output=frame_output(probability, event))
            )
        self.answer.steps = frames
        # Replaced, never changed in place: the engine's checkpoint holds the old arrays.
        scratch[PENDING] = self.samples[frames * frame :].copy()
        scratch[TRACKER] = tracker.counters()
        scratch[OPTIONS] = self.options.as_array()

    def done(self) -> pb.SessionResponse:
        return pb.SessionResponse(run_done=self.answer)


def frame_output(probability: np.float32, event: tuple[str, int] | None) -> pb.StepOutput:
    """One frame's answer: its probability, and the event it made with the event's sample."""
    output = pb.StepOutput()
    add_proto(output.tensors, PROBABILITY, probability)
    if event is not None:
        output.label = event[0]
        add_proto(output.tensors, EVENT_SAMPLE, np.int64(event[1]))
    return output
