"""Whether a drawing can be made: ``--png`` and ``--plot`` need matplotlib, which the serving install leaves out."""

from __future__ import annotations

from service.command import EXIT_USAGE, CommandError


def require_matplotlib(flag: str) -> None:
    """Raises the one-line usage error of ``flag`` when matplotlib cannot be imported, before anything runs."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise CommandError(f"{flag} needs matplotlib", EXIT_USAGE, hint="pip install 'statestream[train]'") from None
