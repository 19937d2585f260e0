"""The voice-activity eval set: twelve Tiny Shakespeare lines spoken by espeak-ng, made once and shipped.

There is no labelled speech on this project's machines, so the scorer hears synthetic speech
whose silences are known: espeak-ng speaks each line (several voices and speeds) and sox
resamples it, without dither, to 16 kHz and to 8 kHz. The clean utterances ship as int16 in
``eval_speech.npz`` beside this file, with ``eval_speech.md`` (tool versions, voices, texts,
hashes), so a score never depends on the espeak-ng a machine has. Made once with::

    python -m training.tasks.voice_activity.eval_set   # --out PATH.npz to write elsewhere

:func:`load_utterances` reads it back; the noise and pauses of the test calls are added at
eval time (``calls.py``).
"""

from __future__ import annotations

import argparse
import hashlib
import shutil
import subprocess
import tempfile
import wave
from pathlib import Path

import numpy as np

from service.datasets.shakespeare import CORPUS_PATH, TRAIN_FRACTION

EVAL_SET = Path(__file__).with_name("eval_speech.npz")
RATES = (16000, 8000)
LINES = 12
#: A line is spoken when it is this long (characters), not a speaker's name ("KATHARINA:") and starts a sentence.
LINE_CHARS = (35, 60)
#: Cycled over the lines: voice i % 4 and speed i % 3 (espeak-ng's -v and -s, words per minute).
VOICES = ("en", "en-us", "en+f3", "en+m3")
SPEEDS_WPM = (140, 165, 190)


def validation_lines(count: int = LINES) -> list[str]:
    """``count`` lines spread evenly over the held-out last 10% of Tiny Shakespeare."""
    text = CORPUS_PATH.read_text()
    held_out = text[int(len(text) * TRAIN_FRACTION) :]
    low, high = LINE_CHARS
    lines = [line.strip() for line in held_out.splitlines()]
    spoken = [line for line in lines if low <= len(line) <= high and not line.endswith(":") and line[0].isupper()]
    every = len(spoken) // count
    return [spoken[i * every] for i in range(count)]


def read_wav(path: Path) -> np.ndarray:
    with wave.open(str(path), "rb") as wav:
        return np.frombuffer(wav.readframes(wav.getnframes()), "<i2").copy()


def require_tools() -> None:
    """RuntimeError naming espeak-ng or sox if one is missing (Debian packages `make test` installs)."""
    for tool in ("espeak-ng", "sox"):
        if shutil.which(tool) is None:
            raise RuntimeError(f"{tool} is not installed: `make test` installs it (Debian package {tool})")


def speak(text: str, voice: str, speed_wpm: int, folder: Path, rates: tuple[int, ...] = RATES) -> dict[int, np.ndarray]:
    """``text`` spoken by espeak-ng and resampled by sox (no dither) to each of ``rates``: int16.
    Its WAV files are written in ``folder`` (the next call overwrites them)."""
    raw = folder / "espeak.wav"
    subprocess.run(["espeak-ng", "-v", voice, "-s", str(speed_wpm), "-w", str(raw), text], check=True, timeout=60)
    spoken = {}
    for rate in rates:
        out = folder / f"{rate}.wav"
        subprocess.run(
            ["sox", "-D", str(raw), "-r", str(rate), "-c", "1", "-b", "16", str(out)], check=True, timeout=60
        )
        spoken[rate] = read_wav(out)
    return spoken


def tool_version(argv: list[str]) -> str:
    """A tool's version line, without espeak-ng's data folder ("eSpeak NG text-to-speech: 1.51  Data at: ...")."""
    line = subprocess.run(argv, check=True, capture_output=True, text=True, timeout=60).stdout.strip().splitlines()[0]
    return " ".join(line.split("Data at:")[0].split())


def make(out: Path) -> str:
    """Speak the lines, write ``out`` (.npz) and its provenance (.md beside it); returns the provenance."""
    try:
        require_tools()
    except RuntimeError as exc:
        raise SystemExit(str(exc)) from None
    texts = validation_lines()
    voices = [VOICES[i % len(VOICES)] for i in range(len(texts))]
    speeds = [SPEEDS_WPM[i % len(SPEEDS_WPM)] for i in range(len(texts))]
    with tempfile.TemporaryDirectory() as scratch:
        spoken = [speak(t, v, s, Path(scratch)) for t, v, s in zip(texts, voices, speeds, strict=True)]
    arrays: dict[str, np.ndarray] = {"text": np.array(texts), "voice": np.array(voices), "speed_wpm": np.array(speeds)}
    for rate in RATES:
        arrays[f"samples_{rate}"] = np.concatenate([s[rate] for s in spoken])
        arrays[f"lengths_{rate}"] = np.array([len(s[rate]) for s in spoken], np.int64)
    np.savez_compressed(out, **arrays)  # type: ignore[arg-type]  # numpy's stub types **kwds as allow_pickle
    note = provenance(out, arrays)
    out.with_suffix(".md").write_text(note)
    return note


def provenance(out: Path, arrays: dict[str, np.ndarray]) -> str:
    """The .md beside the .npz: what made it, from what, and the hashes to check it by."""
    rows = "\n".join(
        f"| {i} | {voice} | {speed} | {text} |"
        for i, (text, voice, speed) in enumerate(zip(arrays["text"], arrays["voice"], arrays["speed_wpm"], strict=True))
    )
    hashes = "\n".join(
        f"- `samples_{rate}` ({len(arrays[f'samples_{rate}']):,} samples, "
        f"{len(arrays[f'samples_{rate}']) / rate:.1f} s): sha256 of its int16 bytes "
        f"`{hashlib.sha256(arrays[f'samples_{rate}'].tobytes()).hexdigest()}`"
        for rate in RATES
    )
    return f"""# {out.name}: the voice-activity eval set, provenance

Made by `python -m training.tasks.voice_activity.eval_set` ([eval_set.py](eval_set.py), which wrote this note),
with {tool_version(["espeak-ng", "--version"])} and {tool_version(["sox", "--version"]).removeprefix("sox: ")}
(Debian packages). Each line is spoken by `espeak-ng -v VOICE -s WPM -w raw.wav TEXT` (22,050 Hz)
and resampled by `sox -D raw.wav -r RATE -c 1 -b 16 out.wav` (`-D`: no dither, so espeak's silences
stay as espeak wrote them) to 16 kHz and 8 kHz. Text: Tiny Shakespeare (public domain,
`service/datasets/corpora/tinyshakespeare.txt`), lines of {LINE_CHARS[0]}-{LINE_CHARS[1]} characters
spread evenly over its held-out last 10% (`validation_lines`).

Arrays: `text`, `voice`, `speed_wpm` (one per utterance); `samples_16000`, `samples_8000` (int16,
the utterances end to end) and `lengths_16000`, `lengths_8000` (each utterance's sample count).

{hashes}
- the file itself: sha256 `{hashlib.sha256(out.read_bytes()).hexdigest()}` ({out.stat().st_size:,} bytes)

| # | voice | words/min | text |
|---|---|---|---|
{rows}
"""


def load_utterances(rate: int, path: Path = EVAL_SET) -> list[np.ndarray]:
    """The shipped clean utterances at ``rate`` (16000 or 8000), as float32 samples in [-1, 1)."""
    if rate not in RATES:
        raise ValueError(f"the eval set is at {RATES} Hz, not {rate}")
    with np.load(path) as data:
        samples, lengths = data[f"samples_{rate}"], data[f"lengths_{rate}"]
    floats = samples.astype(np.float32) / np.float32(32768.0)
    return np.split(floats, np.cumsum(lengths)[:-1])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Speak the voice-activity eval set with espeak-ng (once).")
    parser.add_argument("--out", type=Path, default=EVAL_SET, help=f"the .npz to write (default {EVAL_SET})")
    print(make(parser.parse_args(argv).out))


if __name__ == "__main__":
    main()
