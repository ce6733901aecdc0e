"""Pieces the dataset readers share: the read result, the seeded validation split, image files.

The 300W and WFLW readers (:mod:`asmnet_jax.data.w300`, :mod:`asmnet_jax.data.wflw`) return a
:class:`ReadResult`, carve their validation split with :func:`carve_validation` and load images
with :func:`load_image`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
from typing import Callable, Hashable, List, Optional, Sequence, Tuple, TypeVar

import cv2
import numpy as np

from asmnet_jax.data.errors import DataError, MissingSplit, SkipLog

T = TypeVar("T")

#: Image file extensions the readers look for (compared case-insensitively).
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")

_SIGNATURES = {b"\xff\xd8\xff": "JPEG", b"\x89PNG\r\n\x1a\n": "PNG"}


@dataclasses.dataclass(frozen=True)
class ReadResult:
    """What a reader returns: the good records, the skipped bad ones, and what was absent.

    ``records``: tuple of the reader's record type, in a deterministic order.
    ``skipped``: the bad records skipped under ``skip_bad=True`` (empty otherwise: readers raise).
    ``missing_folders``: the split's folders (relative to the root) that do not exist.
    ``unannotated_images``: image files (relative to the root) that have no annotation beside them.
    Iterating, ``len`` and indexing go to ``records``.
    """

    records: Tuple
    skipped: SkipLog = dataclasses.field(default_factory=SkipLog)
    missing_folders: Tuple[str, ...] = ()
    unannotated_images: Tuple[str, ...] = ()

    def __len__(self) -> int:
        return len(self.records)

    def __iter__(self):
        return iter(self.records)

    def __getitem__(self, index):
        return self.records[index]


def carve_validation(records: Sequence[T], val_fraction: float, seed: int,
                     group_key: Callable[[T], Hashable]) -> Tuple[List[T], List[T]]:
    """Splits ``records`` into ``(train, val)``, keeping each group on one side.

    Groups (e.g. the faces of one photo) are ordered by a SHA-256 hash of ``(seed, key)`` and
    taken into ``val`` in that order until it holds at least ``round(val_fraction * len(records))``
    records (at least one group when ``val_fraction > 0``). The result depends only on the set of
    group keys, the fraction and the seed: not on the input order, the platform or the NumPy
    version; a larger fraction with the same seed gives a superset. Both lists keep the input
    order. ``val_fraction`` must be in ``[0, 1)``; a split that would leave no training record
    raises ValueError.
    """
    if not 0.0 <= float(val_fraction) < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    records = list(records)
    if val_fraction == 0 or not records:
        return records, []
    groups = {}
    for index, record in enumerate(records):
        groups.setdefault(group_key(record), []).append(index)

    def rank(key):
        return hashlib.sha256(f"{int(seed)}\x00{key}".encode("utf-8")).digest()

    target = max(1, int(round(float(val_fraction) * len(records))))
    chosen = set()
    for key in sorted(groups, key=lambda k: (rank(k), str(k))):
        if len(chosen) >= target:
            break
        chosen.update(groups[key])
    if len(chosen) == len(records):
        raise ValueError(
            f"val_fraction={val_fraction} puts all {len(groups)} group(s) of {len(records)} "
            "record(s) into validation; nothing is left to train on")
    train = [r for i, r in enumerate(records) if i not in chosen]
    val = [r for i, r in enumerate(records) if i in chosen]
    return train, val


def image_file_problem(path) -> Optional[str]:
    """Cheap check of an image file without decoding it: None if fine, else the reason.

    Checks that the file exists, is not empty and starts with a JPEG or PNG signature.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        return "image file not found"
    try:
        with open(path, "rb") as f:
            head = f.read(8)
    except OSError as error:
        return f"cannot read image file ({error.strerror})"
    if not head:
        return "image file is empty"
    if not any(head.startswith(signature) for signature in _SIGNATURES):
        return "image file is neither JPEG nor PNG (bad signature)"
    return None


def load_image(path) -> np.ndarray:
    """Decodes an image file into RGB ``uint8`` of shape (H, W, 3).

    Grey images are expanded to three channels. Raises :class:`DataError` naming the file when it
    is missing, unreadable or cannot be decoded.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise DataError(path, "image file not found")
    try:
        data = np.fromfile(path, dtype=np.uint8)
    except OSError as error:
        raise DataError(path, f"cannot read image file ({error.strerror})") from error
    image = cv2.imdecode(data, cv2.IMREAD_COLOR) if data.size else None
    if image is None:
        raise DataError(path, "cannot decode image (empty, truncated or not an image)")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def require_records(records: List, skipped: SkipLog, where, what: str) -> None:
    """Raises at ``where`` when a read produced no record (never served empty): :class:`DataError`
    when every record was bad and skipped, :class:`MissingSplit` when there was none."""
    if records:
        return
    if skipped.count:
        raise DataError(where, f"{what} has no faces left: {skipped.summary()}")
    raise MissingSplit(where, f"{what} has no faces")
