"""A served model at run time: its loaded graphs, its driver, its state slabs and its scheduler.

The registry proves models; this module gives each one the moving parts that serve it, with the
driver its manifest's task names (``service.tasks``).
"""

from __future__ import annotations

import asyncio
import logging
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from service.buffers import HOST
from service.calls import StepCalls
from service.contract import initial_rows
from service.device_slabs import DeviceSlabs
from service.errors import as_statestream_error
from service.metrics import Metrics
from service.providers import session_options
from service.registry import LoadedModel, Registry
from service.scheduler import Scheduler
from service.settings import Settings
from service.slabs import Slabs, StateSlabs
from service.tasks import driver_class

if TYPE_CHECKING:  # pragma: no cover - typing only
    from service.drivers.base import Driver

log = logging.getLogger(__name__)

#: Bound (preallocated) call buffers cover batches of up to max_batch x this many time steps;
#: a larger call (a long prompt chunk of many sessions at once) allocates its own arrays.
MAX_BOUND_STEPS_PER_SESSION = 64


@dataclass
class ModelRuntime:
    model: LoadedModel
    slabs: Slabs
    scheduler: Scheduler
    driver: Driver

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
            inline_call_us=settings.inline_call_us,
            metrics=metrics,
            calls=calls,
        )
        driver = driver_class(model.manifest.task)(model.manifest)
        scheduler.postprocess = driver.postprocess
        return cls(model, slabs, scheduler, driver)

    @property
    def name(self) -> str:
        return self.model.manifest.name

    async def initial_rows(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """A new session's starting row from its init payload: the init graph, run off the event loop.

        It runs on the model's worker thread, between batches, so a slow encoder (a captioner's
        CNN) never stalls the loop. A failure is the model's (INTERNAL); nothing is opened.
        """
        try:
            made = await asyncio.get_running_loop().run_in_executor(self.scheduler.executor, self.model.run_init, feed)
        except Exception as exc:
            raise as_statestream_error(exc) from exc
        return {name: row[0] for name, row in initial_rows(self.model.manifest, made).items()}


def build_slabs(model: LoadedModel, settings: Settings) -> Slabs:
    """The model's state slabs, in the memory ``--state-memory`` picks for its provider."""
    device = model.state_device(settings.state_memory)
    where = "host memory" if device == HOST else f"{device} memory (device slabs)"
    log.info("sessions of %s keep their state in %s", model.manifest.name, where, extra={"model": model.manifest.name})
    manifest = model.manifest
    if device == HOST:
        return StateSlabs(manifest.state, settings.initial_capacity, manifest.context)
    options = session_options(settings)
    return DeviceSlabs(
        manifest.state,
        settings.initial_capacity,
        device,
        providers=model.providers,
        options=options,
        context=manifest.context,
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
        self.gil_switch_interval_s = settings.gil_switch_interval_us / 1e6
        self._by_key = {m.key: ModelRuntime.build(m, settings, metrics) for m in registry}

    def get(self, name: str, version: str = "") -> ModelRuntime:
        return self._by_key[self.registry.get(name, version).key]

    def __iter__(self) -> Iterator[ModelRuntime]:
        return iter(self._by_key.values())

    def start(self) -> None:
        if any(runtime.scheduler.batching for runtime in self._by_key.values()):
            sys.setswitchinterval(self.gil_switch_interval_s)
        for runtime in self._by_key.values():
            runtime.scheduler.start()

    async def stop(self) -> None:
        for runtime in self._by_key.values():
            await runtime.scheduler.stop()
