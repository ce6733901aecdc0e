"""Reader of the official WFLW layout (98 points).

``root/WFLW_images/<event>/<name>.jpg`` and
``root/WFLW_annotations/list_98pt_rect_attr_train_test/list_98pt_rect_attr_{train,test}.txt``:
one face per line, 207 space-separated tokens: 196 floats ``x0 y0 .. x97 y97`` (0-based pixel
coordinates, used as given), the box ``x_min y_min x_max y_max``, six 0/1 attribute flags (pose,
expression, illumination, make-up, occlusion, blur) and the image path under ``WFLW_images/``.

Splits: ``train`` (7,500 faces), ``test`` (2,500), ``val`` (a seeded fraction of ``train``, whole
images) and the test subsets ``test_pose``, ``test_expression``, ``test_illumination``,
``test_makeup``, ``test_occlusion``, ``test_blur`` (the test faces whose flag is 1).
"""

from __future__ import annotations

import dataclasses
import os
from typing import Dict, List, Optional

import numpy as np

from asmnet_jax.data.errors import DataError, MissingSplit, SkipLog
from asmnet_jax.data.splits import (ReadResult, carve_validation, image_file_problem, load_image,
                                    require_records)

__all__ = ["ATTRIBUTES", "SPLITS", "FaceWFLW", "read_wflw", "parse_wflw_line", "list_path",
           "load_image", "ReadResult"]

NUM_POINTS = 98
NUM_TOKENS = 2 * NUM_POINTS + 4 + 6 + 1  # 207
#: The six attribute flags, in file order.
ATTRIBUTES = ("pose", "expression", "illumination", "makeup", "occlusion", "blur")
SPLITS = ("train", "val", "test") + tuple(f"test_{a}" for a in ATTRIBUTES)
IMAGES_DIR = "WFLW_images"
LIST_DIR = os.path.join("WFLW_annotations", "list_98pt_rect_attr_train_test")


@dataclasses.dataclass(frozen=True, eq=False)
class FaceWFLW:
    """One annotated WFLW face.

    ``name``: unique per face, ``<list>/<image path without extension>#<line>``
    (``test/7--Cheering/7_Cheering_Cheering_7_16#2``); ``image``: the image path as the list
    gives it, relative to ``WFLW_images/`` (groups the faces of one image); ``image_path``: the
    image file;
    ``landmarks``: (98, 2) float32 0-based pixel coordinates (x, y), read-only; ``box``: (4,)
    float32 ``x_min, y_min, x_max, y_max`` in pixels, read-only; ``attributes``: the six flags
    ``{"pose": 0 or 1, ...}``; ``line``: 1-based line in ``annotation_path``, the list file.
    """

    name: str
    image: str
    image_path: str
    landmarks: np.ndarray
    box: np.ndarray
    attributes: Dict[str, int]
    line: int
    annotation_path: str


def list_path(root, which: str) -> str:
    """The annotation list of ``which`` (``train`` or ``test``) under ``root``."""
    return os.path.join(os.fspath(root), LIST_DIR, f"list_98pt_rect_attr_{which}.txt")


def _numbers(tokens, first: int, path: str, line: int, what: str) -> np.ndarray:
    """Tokens -> finite float64 array; DataError naming the first bad token otherwise."""
    values = []
    for offset, token in enumerate(tokens):
        try:
            value = float(token)
        except ValueError:
            raise DataError(path, f"{what}: token {first + offset + 1} {token!r} is not a number",
                            line) from None
        if not np.isfinite(value):
            raise DataError(path, f"{what}: token {first + offset + 1} is {token!r}, not finite",
                            line)
        values.append(value)
    return np.asarray(values, np.float64)


def parse_wflw_line(text: str, root, path, line: int, which: str = "test") -> FaceWFLW:
    """Parses one 207-token line of list file ``path`` (list ``which``) into a :class:`FaceWFLW`.

    Raises :class:`DataError` with ``path`` and ``line`` for a wrong token count, a non-numeric,
    NaN or infinite value, a flag other than 0/1 or a box with ``x_min >= x_max`` or
    ``y_min >= y_max``.
    """
    path = os.fspath(path)
    tokens = text.split()
    if len(tokens) != NUM_TOKENS:
        raise DataError(path, f"{len(tokens)} tokens, expected {NUM_TOKENS} (196 coordinates of "
                              "98 points, 4 box values, 6 flags, image path)", line)
    landmarks = _numbers(tokens[:196], 0, path, line, "landmarks").astype(np.float32)
    landmarks = landmarks.reshape(NUM_POINTS, 2)
    box = _numbers(tokens[196:200], 196, path, line, "box").astype(np.float32)
    if not (box[0] < box[2] and box[1] < box[3]):
        raise DataError(path, f"box {' '.join(tokens[196:200])} is not x_min < x_max, "
                              "y_min < y_max", line)
    attributes = {}
    for attribute, token in zip(ATTRIBUTES, tokens[200:206]):
        if token not in ("0", "1"):
            raise DataError(path, f"flag {attribute} is {token!r}, expected 0 or 1", line)
        attributes[attribute] = int(token)
    image = tokens[206].replace("\\", "/")
    landmarks.setflags(write=False)
    box.setflags(write=False)
    return FaceWFLW(
        name=f"{which}/{os.path.splitext(image)[0]}#{line}", image=image,
        image_path=os.path.join(os.fspath(root), IMAGES_DIR, *image.split("/")),
        landmarks=landmarks, box=box, attributes=attributes, line=line, annotation_path=path)


def read_wflw(root, split: str = "train", *, val_fraction: float = 0.0, seed: int = 0,
              check_images: bool = False, skip_bad: bool = False) -> ReadResult:
    """Lists the faces of a WFLW split under ``root``: a :class:`ReadResult` of :class:`FaceWFLW`.

    ``split``: one of :data:`SPLITS`. ``val_fraction``, ``seed``: with ``val_fraction > 0``,
    ``val`` is that fraction of the ``train`` faces (whole images, see
    :func:`~asmnet_jax.data.splits.carve_validation`) and ``train`` is the rest; ignored for the
    test splits; ``val`` needs ``val_fraction > 0``. ``check_images``: also check that every
    image file exists and is a JPEG or PNG (not decoded). ``skip_bad``: skip bad lines into
    ``result.skipped`` instead of raising :class:`DataError`. Blank lines are ignored.

    A missing list file, or a split with no face (e.g. a test subset whose flag is never set),
    raises :class:`DataError`. Records are in file order.
    """
    root = os.fspath(root)
    if split not in SPLITS:
        raise ValueError(f"unknown WFLW split {split!r}; use one of {list(SPLITS)}")
    if split == "val" and not val_fraction > 0:
        raise ValueError("the WFLW 'val' split needs val_fraction > 0")
    which = "test" if split.startswith("test") else "train"
    attribute: Optional[str] = split[len("test_"):] if split.startswith("test_") else None
    path = list_path(root, which)
    if not os.path.isfile(path):
        where = "" if os.path.isdir(root) else " (the root does not exist)"
        raise MissingSplit(path, f"WFLW annotation list for {split!r} not found{where}")
    try:
        with open(path, encoding="utf-8-sig") as f:
            lines = f.read().splitlines()
    except (OSError, UnicodeDecodeError) as error:
        raise DataError(path, f"cannot read annotation list ({error})") from error

    skipped = SkipLog()
    records: List[FaceWFLW] = []
    image_problems: Dict[str, Optional[str]] = {}
    for number, text in enumerate(lines, 1):
        if not text.strip():
            continue
        try:
            record = parse_wflw_line(text, root, path, number, which)
            if check_images:
                if record.image_path not in image_problems:
                    image_problems[record.image_path] = image_file_problem(record.image_path)
                problem = image_problems[record.image_path]
                if problem:
                    raise DataError(path, f"{problem}: {record.image_path}", number)
        except DataError as error:
            if not skip_bad:
                raise
            skipped.add(error)
            continue
        records.append(record)
    require_records(records, skipped, path, f"WFLW list {which!r}")
    if attribute is not None:
        records = [r for r in records if r.attributes[attribute]]
        require_records(records, skipped, path, f"WFLW split {split!r} (flag {attribute} = 1)")
    if split in ("train", "val") and val_fraction > 0:
        train, val = carve_validation(records, val_fraction, seed, lambda r: r.image)
        records = val if split == "val" else train
    return ReadResult(records=tuple(records), skipped=skipped)
