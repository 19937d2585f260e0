"""A served model at run time: its loaded graph, its state slabs and its scheduler.

The registry proves models; this module gives each one the moving parts that serve it.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterator
from dataclasses import dataclass

from service.buffers import HOST
from service.device_slabs import DeviceSlabs
from service.metrics import Metrics
from service.registry import LoadedModel, Registry, StepCalls, session_options
from service.scheduler import Scheduler
from service.settings import Settings
from service.slabs import Slabs, StateSlabs

log = logging.getLogger(__name__)

#: Bound (preallocated) call buffers cover batches of up to max_batch x this many time steps;
#: a larger call (a long prompt chunk of many sessions at once) allocates its own arrays.
MAX_BOUND_STEPS_PER_SESSION = 64

#: How often a thread that holds the GIL is asked to hand it over (Python's default is 5 ms).
#: A batch is handed to the ORT worker thread and back, and each hand-off needs the GIL while
#: the event loop thread is busy decoding and answering: with 5 ms, a 10-20 ms batch waited up
#: to 10 ms for the GIL around its call. 200 µs measured +10-15% steps/s multiplexed and +5-10%
#: at 256 streams on the 2-core box (docs/benchmarks.md).
GIL_SWITCH_INTERVAL_S = 200e-6


@dataclass
class ModelRuntime:
    model: LoadedModel
    slabs: Slabs
    scheduler: Scheduler

    @classmethod
    def build(cls, model: LoadedModel, settings: Settings, metrics: Metrics) -> ModelRuntime:
        slabs = build_slabs(model, settings)
        calls = build_calls(model, settings)
        if settings.scheduler == "batched":
            calls.prepare(steps=1)
        scheduler = Scheduler(
            model,
            slabs,
            max_batch=settings.max_batch,
            max_delay_ms=settings.max_delay_ms,
            batching=settings.scheduler == "batched",
            metrics=metrics,
            calls=calls,
        )
        return cls(model, slabs, scheduler)

    @property
    def name(self) -> str:
        return self.model.manifest.name


def build_slabs(model: LoadedModel, settings: Settings) -> Slabs:
    """The model's state slabs, in the memory ``--state-memory`` picks for its provider."""
    device = model.state_device(settings.state_memory)
    where = "host memory" if device == HOST else f"{device} memory (device slabs)"
    log.info("sessions of %s keep their state in %s", model.manifest.name, where, extra={"model": model.manifest.name})
    if device == HOST:
        return StateSlabs(model.manifest.state, settings.initial_capacity)
    options = session_options(settings)
    return DeviceSlabs(
        model.manifest.state, settings.initial_capacity, device, providers=model.providers, options=options
    )


def build_calls(model: LoadedModel, settings: Settings) -> StepCalls:
    """The model's bound call buffers; their state buffers live where its slabs do."""
    return StepCalls(
        model,
        io_binding=settings.io_binding,
        max_batch=settings.max_batch,
        max_steps=settings.max_batch * MAX_BOUND_STEPS_PER_SESSION,
        state_device=model.state_device(settings.state_memory),
    )


class Runtimes:
    """One ModelRuntime per loaded model, looked up like the registry."""

    def __init__(self, registry: Registry, settings: Settings, metrics: Metrics) -> None:
        self.registry = registry
        self._by_key = {m.key: ModelRuntime.build(m, settings, metrics) for m in registry}

    def get(self, name: str, version: str = "") -> ModelRuntime:
        return self._by_key[self.registry.get(name, version).key]

    def __iter__(self) -> Iterator[ModelRuntime]:
        return iter(self._by_key.values())

    def start(self) -> None:
        if any(runtime.scheduler.batching for runtime in self._by_key.values()):
            sys.setswitchinterval(min(sys.getswitchinterval(), GIL_SWITCH_INTERVAL_S))
        for runtime in self._by_key.values():
            runtime.scheduler.start()

    async def stop(self) -> None:
        for runtime in self._by_key.values():
            await runtime.scheduler.stop()
