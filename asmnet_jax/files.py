"""Output files that appear whole or not at all.

Every file a command writes (metrics, reports, figures, model files, predictions) is written
under a temporary name in its destination folder and renamed into place when complete, so a
command that is interrupted or fails leaves the previous file (or none), never half of one.
"""

from __future__ import annotations

import contextlib
import os
from typing import Iterator


@contextlib.contextmanager
def temporary_path(path: str) -> Iterator[str]:
    """Yields a temporary path beside ``path`` with the same extension (for writers that pick
    the format by it: ``cv2.imwrite``, ``savefig``, ``np.savez``); renames it to ``path`` when
    the block ends normally, removes it when the block raises."""
    path = os.fspath(path)
    folder, name = os.path.split(path)
    stem, ext = os.path.splitext(name)
    temporary = os.path.join(folder, f".{stem}.{os.getpid()}.partial{ext}")
    try:
        yield temporary
        os.replace(temporary, path)
    finally:
        if os.path.exists(temporary):
            os.remove(temporary)


@contextlib.contextmanager
def atomic_open(path: str, mode: str = "w", **kwargs):
    """``open(path, mode)`` for writing through :func:`temporary_path`."""
    with temporary_path(path) as temporary:
        with open(temporary, mode, **kwargs) as handle:
            yield handle
