"""How self-registering plug-ins are found: every module of their package is imported, once.

Drivers (``service/drivers/``) and client commands (``service/client/``) register themselves when
their module is imported, so a new one is one new file and no list names it.
"""

from __future__ import annotations

import functools
import importlib
import pkgutil


@functools.cache
def import_every_module(package: str) -> None:
    """Imports each module of ``package`` (its direct children), once per process."""
    for module in pkgutil.iter_modules(importlib.import_module(package).__path__):
        importlib.import_module(f"{package}.{module.name}")
