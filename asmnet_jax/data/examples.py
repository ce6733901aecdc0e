"""Stored examples: the face crop every dataset keeps, made the same way for 300W, WFLW and
synthetic faces.

An example (its keys: :mod:`asmnet_jax.data.sources`) holds a square crop of ``STORE_SIZE``
pixels around the face: the face box (the landmarks' square bounding box, or a detection box)
grown by ``STORE_MARGIN`` of its side on each side, so that augmentation (rotation, scale,
translation) has real context around the face. ``box`` gives the face box in crop pixels;
:func:`asmnet_jax.data.crop.base_matrix` adds the training margin to it and maps the result onto
the model input (for training, validation and ``asmnet-eval`` alike).
"""

from __future__ import annotations

from typing import Dict, Optional

import numpy as np

from asmnet_jax.data import crop, geometry, synthetic

#: Side of the stored crops in pixels, and the context margin around the face box.
STORE_SIZE = 288
STORE_MARGIN = 0.3
#: Order of the WFLW attribute flags (zeros for datasets without them).
FLAG_NAMES = ("pose", "expression", "illumination", "makeup", "occlusion", "blur")


def make_example(image, points, pose_deg, name: str, face_box=None, flags=None,
                 subset: str = "", store_size: int = STORE_SIZE,
                 store_margin: float = STORE_MARGIN) -> Dict:
    """Crops ``image`` (H, W, 3) uint8 around the face and returns the stored example.

    ``points`` (n, 2) are source pixels; ``face_box`` is a ``crop.SquareBox`` without margin
    (default: the landmarks' square box). Returns ``image`` (S, S, 3) uint8, ``landmarks`` (n, 2)
    float32 crop pixels, ``pose`` (3,) float32 degrees, ``box`` (3,) float32 crop pixels, ``name``,
    ``subset`` and ``flags`` (6,) int64.
    """
    points = np.asarray(points, np.float32)
    box = crop.landmark_box(points, 0.0) if face_box is None else crop.SquareBox(*face_box)
    grown = crop.SquareBox(box.cx, box.cy, box.side * (1.0 + 2.0 * store_margin))
    image_crop, crop_points, matrix = crop.crop_face(image, points, grown, store_size)
    centre = geometry.transform_points(np.array([[box.cx, box.cy]]), matrix)[0]
    side = box.side * store_size / grown.side
    return {
        "image": image_crop,
        "landmarks": crop_points.astype(np.float32),
        "pose": np.asarray(pose_deg, np.float32).reshape(3),
        "box": np.array([centre[0], centre[1], side], np.float32),
        "name": name,
        "subset": subset,
        "flags": np.zeros(6, np.int64) if flags is None else np.asarray(flags, np.int64),
    }


#: Seed offsets that keep the synthetic splits disjoint.
SYNTHETIC_SPLIT_SEEDS = {"train": 0, "validation": 1, "test": 2}


def synthetic_store_size(input_size: int) -> int:
    """Stored synthetic crop size for a model input of ``input_size``: the 288 : 224 ratio of the
    real datasets' stored crops (:data:`STORE_SIZE`), rounded to a multiple of 8."""
    return int(round(input_size * STORE_SIZE / 224 / 8)) * 8


def synthetic_seed(seed: int, split: str) -> int:
    """The synthetic data-set seed of ``split`` of data set ``seed`` (disjoint across splits)."""
    return 1000 * int(seed) + SYNTHETIC_SPLIT_SEEDS[split]


def synthetic_example(seed: int, index: int, store_size: int = STORE_SIZE,
                      num_landmarks: int = 68, split: Optional[str] = None) -> Dict:
    """Synthetic face ``index`` of data set ``seed`` as a stored example.

    Rendered at ``store_size`` and cropped like a real face, so synthetic and real examples have
    the same framing. Depends only on (seed, index).
    """
    record = synthetic.face_record(seed, index, store_size, num_landmarks)
    name = f"synthetic/{seed}/{index}" if split is None else f"synthetic/{split}/{index}"
    return make_example(record["image"], record["landmarks"], record["pose"], name,
                        subset="synthetic", store_size=store_size)
