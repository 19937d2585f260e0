"""What a driver sees of a session: its row, its model's slabs and scheduler, and its scratch.

Drivers sit beside the session store, not above it: they type sessions by this protocol, which
``service.session_store.Session`` satisfies, so no driver imports the store (or the engine).
"""

from __future__ import annotations

from typing import Protocol

import numpy as np

from service.contract import Arrays
from service.scheduler import Scheduler
from service.session_options import ResolvedOptions
from service.slabs import Slabs


class KeepsAfterStep(Protocol):
    """The driver hook a finished step of a session's own row calls (``Driver.after_step``)."""

    def after_step(self, session: SessionView, outputs: Arrays) -> None: ...


class ModelParts(Protocol):
    """The moving parts of a served model that a driver uses (``service.runtime.ModelRuntime``)."""

    @property
    def scheduler(self) -> Scheduler: ...
    @property
    def slabs(self) -> Slabs: ...
    @property
    def driver(self) -> KeepsAfterStep: ...


class SessionView(Protocol):
    """A session as drivers and loops use it; its lock and seq are the engine's, not theirs."""

    #: Driver data kept between requests (a language model's last logits).
    scratch: dict[str, np.ndarray]

    @property
    def row(self) -> int: ...
    @property
    def runtime(self) -> ModelParts: ...
    @property
    def options(self) -> ResolvedOptions: ...
