"""The model's own speed: ONNX Runtime steps/s at a batch size, with no server around it.

It loads the model exactly as the server does (same session options: ORT threads, no spinning,
IOBinding through ``StepCalls``) and calls it back to back with a fixed batch of B sessions ×
K steps. This is the ceiling the batched server variants are compared against.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from service.calls import StepCalls
from service.registry import LoadedModel
from service.settings import Settings
from service.tasks import driver_class


@dataclass
class OrtRate:
    batch: int
    steps: int  # K per session per call
    calls: int
    duration_s: float
    call_latencies_s: np.ndarray
    #: CPU time of this process over the calls (ORT's own threads included), for its cost per step.
    cpu_s: float = float("nan")

    @property
    def steps_per_s(self) -> float:
        return self.calls * self.batch * self.steps / self.duration_s

    def percentile_ms(self, q: float) -> float:
        return float(np.percentile(self.call_latencies_s, q) * 1e3)

    @property
    def cpu_us_per_step(self) -> float:
        return self.cpu_s / (self.calls * self.batch * self.steps) * 1e6


class OrtBench:
    def __init__(self, model_folder: Path, settings: Settings | None = None) -> None:
        self.settings = settings or Settings()
        self.model = LoadedModel.from_folder(model_folder, self.settings, driver_class)

    def rate(self, batch: int, steps: int, duration_s: float) -> OrtRate:
        calls = StepCalls(self.model, io_binding=True, max_batch=batch, max_steps=batch * steps)
        call = calls.get(batch, steps)
        for array in call.inputs.values():
            array[...] = 1
        call.run()  # warm-up: the first call of a shape plans its memory
        latencies: list[float] = []
        clock = time.perf_counter
        cpu = time.process_time()
        start = clock()
        end = start + duration_s
        now = start
        while now < end:
            call.run()
            done = clock()
            latencies.append(done - now)
            now = done
        cpu = time.process_time() - cpu
        return OrtRate(batch, steps, len(latencies), now - start, np.asarray(latencies), cpu)
