"""Reader of the official 300W layout (68 points).

A root holds any of ``afw/``, ``helen/trainset/``, ``helen/testset/``, ``lfpw/trainset/``,
``lfpw/testset/`` and ``ibug/``; each folder holds images (``.jpg``/``.jpeg``/``.png``, any case)
each beside a ``.pts`` annotation of the same name. Splits:

* ``train``: afw + helen/trainset + lfpw/trainset (3,148 faces in the full data set);
  ``val``: a seeded fraction of ``train`` (``val_fraction``, ``seed``), carved by photo;
* ``common``: helen/testset + lfpw/testset (554), ``challenging``: ibug (135),
  ``full``: common + challenging (689).

Listing a split parses the ``.pts`` files only; images are decoded by :func:`load_image` when
needed. Landmarks are returned as 0-based pixel centres (``.pts`` is 1-based: 1 is subtracted).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re
from typing import Dict, List, Optional, Tuple

import numpy as np

from asmnet_jax.data.errors import DataError, MissingSplit, SkipLog
from asmnet_jax.data.splits import (IMAGE_EXTENSIONS, ReadResult, carve_validation,
                                    image_file_problem, load_image, require_records)

__all__ = ["SUBSETS", "SPLITS", "TEST_SET", "Face300W", "read_300w", "read_pts", "photo_key",
           "load_image", "ReadResult"]

log = logging.getLogger(__name__)

NUM_POINTS = 68
#: The folders of the official layout, relative to the root.
SUBSETS = ("afw", "helen/trainset", "helen/testset", "lfpw/trainset", "lfpw/testset", "ibug")
#: The folders of each split (``val`` is carved out of ``train``).
SPLITS: Dict[str, Tuple[str, ...]] = {
    "train": ("afw", "helen/trainset", "lfpw/trainset"),
    "common": ("helen/testset", "lfpw/testset"),
    "challenging": ("ibug",),
    "full": ("helen/testset", "lfpw/testset", "ibug"),
}
#: Which test set a test folder belongs to.
TEST_SET = {"helen/testset": "common", "lfpw/testset": "common", "ibug": "challenging"}
# Folders whose file names end in ``_<face index>`` after the photo's name (LFPW's
# ``image_0001`` has no face index).
_FACE_INDEXED = ("afw", "helen/trainset", "helen/testset", "ibug")
_FACE_INDEX = re.compile(r"_\d+$")


@dataclasses.dataclass(frozen=True, eq=False)
class Face300W:
    """One annotated 300W face.

    ``name``: path relative to the root without extension, ``/``-separated
    (``helen/trainset/100032540_1``); ``image_path``: the image file; ``landmarks``: (68, 2)
    float32 0-based pixel coordinates (x, y) in that image, read-only; ``subset``: the folder
    (``afw``, ``helen/trainset``, ...); ``test_set``: ``"common"`` or ``"challenging"`` for test
    folders, None for training folders; ``annotation_path``: the ``.pts`` file.
    """

    name: str
    image_path: str
    landmarks: np.ndarray
    subset: str
    test_set: Optional[str]
    annotation_path: str

    @property
    def photo(self) -> str:
        """The photo this face was annotated on (AFW's ``NAME_1``, ``NAME_2`` share ``NAME``)."""
        return photo_key(self.name)


def photo_key(name: str) -> str:
    """``afw/NAME_2`` -> ``afw/NAME``: the key that groups the faces of one photo.

    The face index suffix is stripped in afw, helen and ibug; LFPW names have none.
    """
    subset = name.rsplit("/", 1)[0]
    return _FACE_INDEX.sub("", name) if subset in _FACE_INDEXED else name


def read_pts(path, num_points: int = NUM_POINTS) -> np.ndarray:
    """Reads a ``.pts`` file: (num_points, 2) float32 0-based pixel coordinates.

    Accepts the official form (``version: 1`` / ``n_points: 68`` / ``{`` / points / ``}``) and a
    bare list of ``x y`` lines; blank lines are ignored. Raises :class:`DataError` with the file
    and line for a wrong point count, a malformed line, or a non-numeric, NaN or infinite value.
    """
    path = os.fspath(path)
    try:
        with open(path, encoding="utf-8-sig") as f:
            text = f.read()
    except UnicodeDecodeError as error:
        raise DataError(path, f"not a text file ({error.reason})") from error
    except OSError as error:
        raise DataError(path, f"cannot read annotation ({error.strerror})") from error
    entries = [(number, line.strip()) for number, line in enumerate(text.splitlines(), 1)
               if line.strip()]
    if not entries:
        raise DataError(path, "empty annotation file")

    position = 0
    declared = None
    if entries[0][1].lower().startswith("version"):
        position += 1
    if position < len(entries) and entries[position][1].lower().startswith("n_points"):
        number, line = entries[position]
        value = line.split(":", 1)[1].strip() if ":" in line else ""
        if not value.isdigit():
            raise DataError(path, f"cannot read the point count from {line!r}", number)
        declared = int(value)
        if declared != num_points:
            raise DataError(path, f"n_points is {declared}, expected {num_points}", number)
        position += 1
    braced = position < len(entries) and entries[position][1] == "{"
    if position and not braced:
        number, line = entries[position] if position < len(entries) else entries[-1]
        raise DataError(path, f"expected '{{' after the header, got {line!r}", number)
    position += braced

    points: List[Tuple[float, float]] = []
    closed_at = None
    for number, line in entries[position:]:
        if closed_at is not None:
            raise DataError(path, f"unexpected text after '}}': {line!r}", number)
        if braced and line == "}":
            closed_at = number
            continue
        tokens = line.split()
        if len(tokens) != 2:
            raise DataError(path, f"expected a point 'x y', got {len(tokens)} token(s): {line!r}",
                            number)
        try:
            x, y = float(tokens[0]), float(tokens[1])
        except ValueError:
            raise DataError(path, f"non-numeric coordinate in {line!r}", number) from None
        if not (np.isfinite(x) and np.isfinite(y)):
            raise DataError(path, f"non-finite coordinate in {line!r}", number)
        if len(points) == num_points:
            raise DataError(path, f"more than {num_points} points", number)
        points.append((x, y))
    if braced and closed_at is None:
        raise DataError(path, "missing the closing '}'", entries[-1][0])
    if len(points) != num_points:
        raise DataError(path, f"{len(points)} points, expected {num_points}",
                        closed_at or entries[-1][0])
    landmarks = np.asarray(points, np.float32) - np.float32(1.0)
    landmarks.setflags(write=False)
    return landmarks


def _list_folder(root: str, subset: str):
    """Sorted ``.pts`` stems of a folder, and its images by stem: ({stem: [file, ...]})."""
    folder = os.path.join(root, *subset.split("/"))
    annotations, images = [], {}
    for entry in sorted(os.listdir(folder)):
        stem, ext = os.path.splitext(entry)
        if ext.lower() == ".pts":
            annotations.append((stem, entry))
        elif ext.lower() in IMAGE_EXTENSIONS:
            images.setdefault(stem, []).append(entry)
    return folder, annotations, images


def read_300w(root, split: str = "train", *, val_fraction: float = 0.0, seed: int = 0,
              check_images: bool = False, skip_bad: bool = False) -> ReadResult:
    """Lists the faces of a 300W split under ``root``: a :class:`ReadResult` of :class:`Face300W`.

    ``split``: one of ``train``, ``val``, ``common``, ``challenging``, ``full``.
    ``val_fraction``, ``seed``: with ``val_fraction > 0``, ``val`` is that fraction of the
    ``train`` faces (whole photos, see :func:`~asmnet_jax.data.splits.carve_validation`) and
    ``train`` is the rest; ignored for the test splits; ``val`` needs ``val_fraction > 0``.
    ``check_images``: also check that every image file exists and is a JPEG or PNG (not decoded).
    ``skip_bad``: skip bad faces into ``result.skipped`` instead of raising :class:`DataError`.

    A split none of whose folders exist raises :class:`DataError` naming the root and the
    folders; absent folders of a partly present split are logged and listed in
    ``result.missing_folders``. Images without a ``.pts`` are logged and listed in
    ``result.unannotated_images``. Records are in folder order, then by file name.
    """
    root = os.fspath(root)
    if split not in SPLITS and split != "val":
        raise ValueError(f"unknown 300W split {split!r}; use one of {sorted(SPLITS) + ['val']}")
    if split == "val" and not val_fraction > 0:
        raise ValueError("the 300W 'val' split needs val_fraction > 0")
    folders = SPLITS["train" if split == "val" else split]
    missing = tuple(s for s in folders if not os.path.isdir(os.path.join(root, *s.split("/"))))
    if len(missing) == len(folders):
        where = "" if os.path.isdir(root) else " (the root does not exist)"
        raise MissingSplit(root, f"300W split {split!r} has none of its folders here{where}: "
                              f"missing {', '.join(missing)}")
    if missing:
        log.warning("300W split %r under %s: folder(s) %s missing; reading %s", split, root,
                    ", ".join(missing), ", ".join(s for s in folders if s not in missing))

    skipped = SkipLog()
    records: List[Face300W] = []
    unannotated: List[str] = []
    for subset in folders:
        if subset in missing:
            continue
        folder, annotations, images = _list_folder(root, subset)
        stems = {stem for stem, _ in annotations}
        unannotated += [f"{subset}/{f}" for stem, files in images.items() if stem not in stems
                        for f in files]
        for stem, pts_file in annotations:
            pts_path = os.path.join(folder, pts_file)
            try:
                candidates = images.get(stem, [])
                if not candidates:
                    raise DataError(pts_path, "no image beside this annotation (looked for "
                                              f"{stem} with extension {'/'.join(IMAGE_EXTENSIONS)})")
                if len(candidates) > 1:
                    raise DataError(pts_path, "several images match this annotation: "
                                              + ", ".join(candidates))
                image_path = os.path.join(folder, candidates[0])
                if check_images:
                    problem = image_file_problem(image_path)
                    if problem:
                        raise DataError(image_path, f"{problem} (annotated by {pts_file})")
                landmarks = read_pts(pts_path)
            except DataError as error:
                if not skip_bad:
                    raise
                skipped.add(error)
                continue
            records.append(Face300W(name=f"{subset}/{stem}", image_path=image_path,
                                    landmarks=landmarks, subset=subset,
                                    test_set=TEST_SET.get(subset), annotation_path=pts_path))
    if unannotated:
        log.warning("300W under %s: %d image(s) have no .pts and are not used, e.g. %s", root,
                    len(unannotated), unannotated[0])
    require_records(records, skipped, root, f"300W split {split!r}")
    if split in ("train", "val") and val_fraction > 0:
        train, val = carve_validation(records, val_fraction, seed, lambda r: r.photo)
        records = val if split == "val" else train
    return ReadResult(records=tuple(records), skipped=skipped, missing_folders=missing,
                      unannotated_images=tuple(unannotated))
