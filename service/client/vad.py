"""``statestream client vad``: voice activity in a WAV file, streamed as a live call would send it.

    statestream client vad --model silero_vad --wav call.wav
    statestream client vad --model silero_vad --wav call.wav --realtime --chunk-ms 20 --json
    statestream client vad --model silero_vad --wav call.wav --png call.png

The file (mono PCM16 at the model's rate, read with the standard library's ``wave``) is sent in
chunks of ``--chunk-ms`` (32 ms: one Silero frame) as Runs of one session, each chunk sent as soon
as the last is answered, or on a live call's schedule with ``--realtime``. The server buffers
partial frames, so any chunk length gives the same answers. Segments are printed as their end
is detected; ``--json`` prints one document with every frame's speech probability and the
segments in seconds; ``--png`` draws the waveform with the segments over it and each frame's
probability against the threshold. A segment still open when the file ends closes at its end.
"""

from __future__ import annotations

import argparse
import json
import time
import wave
from pathlib import Path
from typing import Any

import numpy as np

from service.api import statestream_pb2 as pb
from service.client.plots import check_drawing
from service.client.registry import command, served_model
from service.client.sdk import Client
from service.command import EXIT_USAGE, CommandError, float_in, int_in
from service.tensors import from_proto

DESCRIPTION = "find the speech in a WAV file (voice activity), chunk by chunk as a live call sends it"
#: What the server names in each frame's answer (service/drivers/voice_activity.py).
PROBABILITY, EVENT_SAMPLE, SPEECH_START, SPEECH_END = "speech_probability", "sample", "speech_start", "speech_end"
CONVERT_HINT = "convert it with: sox IN.wav -c 1 -b 16 -r {rate} OUT.wav"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``vad`` subcommand's own options (``service.client.commands`` adds the connection ones)."""
    parser.add_argument(
        "--model", required=True, help="a voice_activity model, as 'statestream client models' lists it"
    )
    parser.add_argument("--wav", type=Path, required=True, help="a mono PCM16 WAV file at the model's sample rate")
    parser.add_argument("--chunk-ms", type=int_in(1, 10_000), default=32, help="audio per Run, in ms (20: telephony)")
    parser.add_argument("--realtime", action="store_true", help="send each chunk when a live call would, not at once")
    parser.add_argument("--threshold", type=float_in(0.01, 0.99), default=0.5, help="speech probability threshold")
    parser.add_argument("--min-silence-ms", type=float_in(0, 60_000), default=100.0, help="silence that ends speech")
    parser.add_argument(
        "--speech-pad-ms", type=float_in(0, 60_000), default=30.0, help="padding on each side of a segment"
    )
    parser.add_argument(
        "--png", type=Path, help="draw the waveform, the segments and every frame's probability (needs matplotlib)"
    )


def read_wav(path: Path, rate: int) -> np.ndarray:
    """The file's samples (int16); a one-line CommandError with a hint for anything but mono PCM16 at ``rate``."""
    hint = CONVERT_HINT.format(rate=rate)
    try:
        with wave.open(str(path), "rb") as wav:
            channels, width, file_rate = wav.getnchannels(), wav.getsampwidth(), wav.getframerate()
            data = wav.readframes(wav.getnframes())
    except OSError as exc:
        raise CommandError(f"cannot read --wav {path}: {exc.strerror or exc}", EXIT_USAGE) from exc
    except (wave.Error, EOFError) as exc:
        reason = f" ({exc})" if str(exc) else ""  # an empty or short file: EOFError(), no words
        raise CommandError(f"--wav {path} is not a PCM WAV file{reason}", EXIT_USAGE, hint=hint) from exc
    if channels != 1:
        raise CommandError(f"--wav {path} has {channels} channels; the VAD takes mono", EXIT_USAGE, hint=hint)
    if width != 2:
        raise CommandError(f"--wav {path} is {8 * width}-bit; the VAD takes 16-bit PCM", EXIT_USAGE, hint=hint)
    if file_rate != rate:
        raise CommandError(f"--wav {path} is at {file_rate} Hz; model takes {rate} Hz", EXIT_USAGE, hint=hint)
    samples = np.frombuffer(data, "<i2")
    if len(samples) == 0:
        raise CommandError(f"--wav {path} holds no audio", EXIT_USAGE)
    return samples


def model_rate(info: Any) -> int:
    """The model's sample rate: the default of its Run option ``sample_rate`` (the driver reports it)."""
    return int(next(o.default for o in info.task_info.run_options if o.name == "sample_rate"))


@command("vad", DESCRIPTION, add_arguments, tasks=("voice_activity",))
def vad(client: Client, args: argparse.Namespace) -> int:
    if args.png is not None:
        check_drawing("--png", args.png)
    info = served_model(client, args)
    rate = model_rate(info)
    frame = int(info.inputs[0].shape[-1])
    samples = read_wav(args.wav, rate)
    chunk = max(1, rate * args.chunk_ms // 1000)
    options = {
        "threshold": args.threshold,
        "min_silence_duration_ms": args.min_silence_ms,
        "speech_pad_ms": args.speech_pad_ms,
    }
    probabilities: list[float] = []
    segments: list[dict[str, float]] = []
    started = time.monotonic()
    session = client.open(args.model)
    try:
        for index, first in enumerate(range(0, len(samples), chunk)):
            if args.realtime:
                time.sleep(max(0.0, started + index * chunk / rate - time.monotonic()))
            audio = samples[first : first + chunk]
            for answer in session.run(len(audio) // frame + 1, tensors={"audio": audio}, options=options):
                if isinstance(answer, pb.RunOutput):
                    probabilities.append(_event(answer.output, segments, rate, args.json))
            options = {}  # they stay set for the session
    finally:  # a refused Run (StepFailed) is reported by the client's one error path
        session.close()
    audio_s = len(samples) / rate
    if segments and "end" not in segments[-1]:
        segments[-1]["end"] = round(audio_s, 4)
        _print_segment(segments[-1], args.json)
    wall_s = time.monotonic() - started
    drawn = {}
    if args.png is not None:
        draw_call(args.png, samples, rate, frame, probabilities, segments, args.threshold, title=args.model)
        drawn = {"png": str(args.png)}
    if args.json:
        summary = {"model": args.model, "sample_rate": rate, "audio_s": round(audio_s, 4), "frames": len(probabilities)}
        found = {"wall_s": round(wall_s, 3), "probabilities": probabilities, "segments": segments}
        print(json.dumps(summary | found | drawn))
        return 0
    speech_s = sum(s["end"] - s["start"] for s in segments)
    print(
        f"{len(segments)} segment(s), {speech_s:.2f} s of speech in {audio_s:.2f} s of audio "
        f"({len(probabilities)} frames, {wall_s:.2f} s{' paced' if args.realtime else ''})"
    )
    return 0


def _event(output: Any, segments: list[dict[str, float]], rate: int, quiet: bool) -> float:
    """One frame's answer: its probability; a speech event opens or closes a segment (printed when closed)."""
    tensors = {t.name: from_proto(t) for t in output.tensors}
    if output.label == SPEECH_START:
        segments.append({"start": round(int(tensors[EVENT_SAMPLE]) / rate, 4)})
    elif output.label == SPEECH_END:
        segments[-1]["end"] = round(int(tensors[EVENT_SAMPLE]) / rate, 4)
        _print_segment(segments[-1], quiet)
    return float(tensors[PROBABILITY])


def _print_segment(segment: dict[str, float], quiet: bool) -> None:
    if not quiet:
        print(f"speech {segment['start']:.3f} s - {segment['end']:.3f} s", flush=True)


def draw_call(
    path: Path,
    samples: np.ndarray,
    rate: int,
    frame: int,
    probabilities: list[float],
    segments: list[dict[str, float]],
    threshold: float,
    *,
    title: str,
) -> None:
    """The waveform with the speech segments shaded over it, and below it each frame's probability
    against the threshold, on one time axis (seconds)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (wave_ax, prob_ax) = plt.subplots(2, 1, figsize=(8, 4), sharex=True, height_ratios=(3, 2))
    wave_ax.plot(np.arange(len(samples)) / rate, samples / 32768.0, lw=0.4, color="tab:gray")
    for segment in segments:
        for ax in (wave_ax, prob_ax):
            ax.axvspan(segment["start"], segment["end"], color="tab:green", alpha=0.2, lw=0)
    wave_ax.set_ylabel("audio")
    wave_ax.set_title(f"{title}: {len(segments)} speech segment(s), shaded", fontsize=9)
    ends = (np.arange(len(probabilities)) + 1) * frame / rate  # a frame's answer comes once it is whole
    prob_ax.step(ends, probabilities, where="post", lw=1.0, color="tab:blue")
    prob_ax.axhline(threshold, color="tab:red", lw=0.8, ls="--", label=f"threshold {threshold:g}")
    prob_ax.set_ylim(0, 1)
    prob_ax.set_ylabel("speech p")
    prob_ax.set_xlabel("seconds")
    prob_ax.legend(fontsize=7, loc="upper right")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
