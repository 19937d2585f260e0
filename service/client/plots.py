"""Whether a drawing can be made: ``--png`` and ``--plot`` need matplotlib, which the serving install leaves out,
and a file name the command can write."""

from __future__ import annotations

import os
from pathlib import Path

from service.command import EXIT_USAGE, CommandError


def require_matplotlib(flag: str) -> None:
    """Raises the one-line usage error of ``flag`` when matplotlib cannot be imported, before anything runs."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise CommandError(f"{flag} needs matplotlib", EXIT_USAGE, hint="pip install 'statestream[train]'") from None


def _matplotlib_suffixes() -> set[str]:
    from matplotlib.backend_bases import FigureCanvasBase

    return {f".{name}" for name in FigureCanvasBase.get_supported_filetypes()}


def _pillow_suffixes() -> set[str]:
    from PIL import Image

    Image.init()
    return {suffix for suffix, kind in Image.registered_extensions().items() if kind in Image.SAVE}


def check_drawing(flag: str, path: Path, *, matplotlib: bool = True) -> None:
    """Refuses, in one usage line before anything runs, a drawing ``flag`` could not write to ``path``.

    The drawing is made last, after the whole stream: unchecked, a folder given as the file, a
    folder that does not exist or a suffix the library does not write ended the command in a
    traceback once the work was done (and matplotlib, given no suffix, writes NAME.png instead).
    ``matplotlib`` False: Pillow draws it.
    """
    if matplotlib:
        require_matplotlib(flag)
    if path.is_dir():
        raise CommandError(f"{flag} {path}: is a folder", EXIT_USAGE, hint="give the name of the image to write")
    folder = path.parent
    if not folder.is_dir():
        raise CommandError(f"{flag} {path}: there is no folder {folder} to write it in", EXIT_USAGE)
    if not os.access(folder, os.W_OK | os.X_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise CommandError(f"{flag} {path}: cannot write it (permission denied)", EXIT_USAGE)
    suffix = path.suffix.lower()
    if suffix not in (_matplotlib_suffixes() if matplotlib else _pillow_suffixes()):
        what = f"{suffix!r} is not an image format it writes" if suffix else "the name has no image suffix"
        raise CommandError(f"{flag} {path}: {what}", EXIT_USAGE, hint="end the name in .png")
