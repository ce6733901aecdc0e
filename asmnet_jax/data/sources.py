"""Where faces come from: the one place that opens a split of a data set, for training and for
evaluation alike.

A *source* has ``__len__`` and ``__getitem__(index) -> example``; an example is a dict with

* ``image``: uint8 (h, w, 3) RGB, a face crop larger than the model input (context for
  augmentation);
* ``landmarks``: float32 (n, 2), 0-based pixel coordinates in that crop;
* ``pose``: float32 (3,), yaw, pitch, roll in degrees (:mod:`asmnet_jax.data.pose`);
* ``box``: float32 (3,), the square face box (centre x, centre y, side) in crop pixels, without
  margin (:func:`asmnet_jax.data.crop.base_matrix` adds the margin);
* ``name``: str, plus optional bookkeeping (subset flags).

Three kinds of data set, opened by :func:`open_split`:

* ``synthetic``: procedural faces (:class:`SyntheticSource`), no files at all;
* a TFDS data set built by ``asmnet-build-data`` (``w300``, ``wflw``, ``synthetic_faces``), read
  through its array_record data source (needs tensorflow-datasets, imported only then);
* the portable ``.npz`` export of such a data set (``asmnet-build-data ... --npz DIR``), read into
  :class:`HostArrays` with NumPy alone (no TensorFlow: the GPU machines read this).

:class:`HostArrays` is also how a whole split is held in memory when it is placed on the devices
(:mod:`asmnet_jax.data.resident`) or evaluated (:mod:`asmnet_jax.evaluation`). This module needs
NumPy only.
"""

from __future__ import annotations

import dataclasses
import os
import zipfile
from typing import Any, Dict, List, Mapping, Optional

import numpy as np

from asmnet_jax import landmarks as lm
from asmnet_jax.data.errors import DataError
from asmnet_jax.errors import OptionError
from asmnet_jax.files import atomic_open

#: The data sets a config or ``asmnet-eval --dataset`` may name.
DATASETS = ("synthetic", "w300", "wflw", "synthetic_faces")
#: The splits of the procedural data set (``test`` has as many faces as ``validation``).
SYNTHETIC_SPLITS = ("train", "validation", "test")
#: The arrays of a :class:`HostArrays` and of a portable ``.npz`` export.
ARRAY_KEYS = ("image", "landmarks", "pose", "box", "name")


# ---------------------------------------------------------------------------------------------
# Opening a split


def open_split(config: Mapping[str, Any], split: str, *, dataset: Optional[str] = None,
               data_dir: Optional[str] = None, arrays_dir: Optional[str] = None,
               tfds_config: Optional[str] = None, in_memory: bool = False):
    """A random-access source of ``split``.

    Args:
      config: a training config (a ``ConfigDict`` or the dict of a run's ``config.json``): its
        ``dataset``, ``num_landmarks``, ``input_size``, ``synthetic``, ``data_dir`` and
        ``arrays_dir`` are the defaults of the arguments below.
      split: the split's name.
      dataset, data_dir, arrays_dir: override the config's (``asmnet-eval --dataset ...``).
        With an ``arrays_dir``, the split's ``.npz`` export there is read instead of TFDS.
      tfds_config: the TFDS builder config (``asmnet-build-data --tfds-config``).
      in_memory: render synthetic faces now (training reads each many times) instead of on
        demand.
    """
    dataset = dataset or config.get("dataset")
    if dataset not in DATASETS:
        raise OptionError(f"unknown dataset {dataset!r}; use one of {', '.join(DATASETS)}")
    num_landmarks = int(config.get("num_landmarks", 68))
    if dataset == "synthetic":
        synthetic = dict(config.get("synthetic") or {})
        if split not in SYNTHETIC_SPLITS:
            raise OptionError(f"dataset 'synthetic' has no split {split!r}; it has "
                              f"{', '.join(SYNTHETIC_SPLITS)}")
        count = synthetic.get(split, synthetic.get("validation", 200))
        return synthetic_split(split, int(count), int(synthetic.get("seed", 0)), num_landmarks,
                               int(config.get("input_size", 64)), in_memory=in_memory)
    arrays_dir = arrays_dir or config.get("arrays_dir") or None
    if arrays_dir:
        return ArraySource(load_npz(npz_path(arrays_dir, dataset, split), num_landmarks))
    from asmnet_jax.data import tfds_builders  # tensorflow-datasets, only for TFDS data sets

    data_dir = data_dir or config.get("data_dir") or None
    return tfds_builders.data_source(dataset, split, data_dir, tfds_config)


def available_splits(dataset: str, data_dir=None, tfds_config=None,
                     arrays_dir=None) -> List[str]:
    """The splits ``dataset`` offers (for TFDS: the built ones; with ``arrays_dir``: the
    ``.npz`` exports in ``arrays_dir/dataset``)."""
    if dataset == "synthetic":
        return list(SYNTHETIC_SPLITS)
    if dataset not in DATASETS:
        raise OptionError(f"unknown dataset {dataset!r}; use one of {', '.join(DATASETS)}")
    if arrays_dir:
        folder = os.path.join(arrays_dir, dataset)
        names = sorted(f[:-4] for f in os.listdir(folder) if f.endswith(".npz")) \
            if os.path.isdir(folder) else []
        if not names:
            raise OptionError(f"{folder}: no .npz export of {dataset!r} here (write them with "
                              f"asmnet-build-data {dataset} ... --npz {arrays_dir})")
        return names
    from asmnet_jax.data import tfds_builders

    return list(tfds_builders.built_builder(dataset, data_dir, tfds_config).info.splits)


def host_arrays(source, num_landmarks: int, what: str = "the source") -> "HostArrays":
    """The examples of ``source`` stacked (a ``.npz`` export's arrays are used as they are)."""
    if isinstance(source, ArraySource):
        return source.arrays
    return arrays_from_source(source, num_landmarks, what)


# ---------------------------------------------------------------------------------------------
# Procedural faces


class InMemorySource:
    """A list of examples as a random-access source."""

    def __init__(self, items):
        self._items = list(items)

    def __len__(self):
        return len(self._items)

    def __getitem__(self, index):
        return self._items[index]


class SyntheticSource:
    """Synthetic faces rendered on demand (no dataset to build): element i depends only on
    (seed, i). ``seed`` selects the data set, so train / validation / test use different seeds;
    ``split``, when given, names the examples ``synthetic/SPLIT/i``."""

    def __init__(self, count: int, seed: int = 0, num_landmarks: int = 68,
                 store_size: Optional[int] = None, split: Optional[str] = None):
        from asmnet_jax.data import examples  # OpenCV draws them: not needed for other sets

        self._examples = examples
        self._count = int(count)
        self._seed = int(seed)
        self._num_landmarks = lm.check_num_landmarks(num_landmarks)
        self._store_size = int(examples.STORE_SIZE if store_size is None else store_size)
        self._split = split

    def __len__(self) -> int:
        return self._count

    def __getitem__(self, index: int) -> Dict[str, Any]:
        index = int(index)
        if not 0 <= index < self._count:
            raise IndexError(f"synthetic index {index} out of range [0, {self._count})")
        return self._examples.synthetic_example(self._seed, index, self._store_size,
                                          self._num_landmarks, split=self._split)

    def __repr__(self) -> str:
        return f"SyntheticSource(count={self._count}, seed={self._seed})"


def synthetic_split(split: str, count: int, seed: int, num_landmarks: int, input_size: int,
                    in_memory: bool = False):
    """Split ``split`` of a run's synthetic faces (config ``synthetic.SPLIT`` faces and
    ``synthetic.seed``), stored at the crop size that ``input_size`` implies: the faces training
    renders and ``asmnet-eval`` re-renders, the same for the same arguments. ``in_memory``:
    rendered now into an :class:`InMemorySource`, else on demand."""
    from asmnet_jax.data import examples  # OpenCV draws them: not needed for other sets

    source = SyntheticSource(count, examples.synthetic_seed(seed, split), num_landmarks,
                             examples.synthetic_store_size(input_size), split=split)
    if in_memory:
        return InMemorySource(source[i] for i in range(len(source)))
    return source


# ---------------------------------------------------------------------------------------------
# A split in memory, and its portable export


@dataclasses.dataclass
class HostArrays:
    """A split as stacked NumPy arrays (N examples): the stored crops and their labels."""

    image: np.ndarray       # (N, H, W, 3) uint8
    landmarks: np.ndarray   # (N, n, 2) float32 pixels of the stored crop
    pose: np.ndarray        # (N, 3) float32 degrees (yaw, pitch, roll)
    box: np.ndarray         # (N, 3) float32 (centre x, centre y, side), no margin
    name: np.ndarray        # (N,) str

    def __len__(self) -> int:
        return int(self.image.shape[0])

    @property
    def nbytes(self) -> int:
        return int(self.image.nbytes + self.landmarks.nbytes + self.pose.nbytes + self.box.nbytes)


class ArraySource:
    """:class:`HostArrays` as a random-access source."""

    def __init__(self, arrays: HostArrays):
        self.arrays = arrays

    def __len__(self) -> int:
        return len(self.arrays)

    def __getitem__(self, index: int) -> Dict:
        a = self.arrays
        return {"image": a.image[index], "landmarks": a.landmarks[index], "pose": a.pose[index],
                "box": a.box[index], "name": str(a.name[index])}


def arrays_from_source(source, num_landmarks: int, what: str = "the source") -> HostArrays:
    """Reads every example of a random-access ``source`` into :class:`HostArrays`. All crops
    must have one size; the first that differs is named."""
    count = len(source)
    if count == 0:
        raise DataError(what, "holds no faces")
    first = source[0]
    shape = np.asarray(first["image"]).shape
    if len(shape) != 3 or shape[2] != 3:
        raise DataError(what, f"example {_name(first, 0)!r} has an image of shape {shape}, "
                              "expected (H, W, 3)")
    images = np.empty((count, *shape), np.uint8)
    points_all = np.empty((count, num_landmarks, 2), np.float32)
    poses = np.empty((count, 3), np.float32)
    boxes = np.empty((count, 3), np.float32)
    names: List[str] = []
    for index in range(count):
        example = first if index == 0 else source[index]
        image = np.asarray(example["image"])
        if image.shape != shape:
            raise DataError(what, f"example {_name(example, index)!r} has an image of shape "
                                  f"{image.shape}, the first one {shape}; a resident set needs "
                                  "one size (set config.input='host')")
        points = np.asarray(example["landmarks"], np.float32)
        if points.shape != (num_landmarks, 2):
            raise DataError(what, f"example {_name(example, index)!r} has landmarks of shape "
                                  f"{points.shape}, expected ({num_landmarks}, 2)")
        images[index] = image
        points_all[index] = points
        poses[index] = np.asarray(example["pose"], np.float32)
        boxes[index] = np.asarray(example["box"], np.float32)
        names.append(_name(example, index))
    return HostArrays(images, points_all, poses, boxes, np.asarray(names))


def _name(example, index) -> str:
    name = example.get("name", index)
    return name.decode("utf-8") if isinstance(name, bytes) else str(name)


def npz_path(directory: str, dataset: str, split: str) -> str:
    """Where ``asmnet-build-data --npz DIR`` writes split ``split`` of ``dataset``."""
    return os.path.join(directory, dataset, f"{split}.npz")


def save_npz(arrays: HostArrays, path: str) -> None:
    """Writes ``arrays`` as an uncompressed ``.npz`` (the crops are already small; loading is then
    a plain read). Written to a temporary name and renamed."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with atomic_open(path, "wb") as f:
        np.savez(f, image=arrays.image, landmarks=arrays.landmarks, pose=arrays.pose,
                 box=arrays.box, name=arrays.name.astype(str))


def load_npz(path: str, num_landmarks: int) -> HostArrays:
    """Reads a split written by :func:`save_npz`, checking its keys and shapes (errors name the
    file)."""
    if not os.path.isfile(path):
        raise DataError(path, "no such file (write it with asmnet-build-data ... --npz DIR)")
    try:
        with np.load(path, allow_pickle=False) as data:
            missing = [key for key in ARRAY_KEYS if key not in data.files]
            if missing:
                raise DataError(path, f"missing arrays {missing}; it holds {data.files}")
            arrays = HostArrays(**{key: data[key] for key in ARRAY_KEYS})
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as error:  # truncated, not npz
        raise DataError(path, f"not a readable .npz file ({error})") from None
    n = len(arrays)
    checks = ((arrays.image.dtype == np.uint8 and arrays.image.ndim == 4
               and arrays.image.shape[3] == 3, "image", "(N, H, W, 3) uint8"),
              (arrays.landmarks.shape == (n, num_landmarks, 2), "landmarks",
               f"(N, {num_landmarks}, 2)"),
              (arrays.pose.shape == (n, 3), "pose", "(N, 3)"),
              (arrays.box.shape == (n, 3), "box", "(N, 3)"),
              (arrays.name.shape == (n,), "name", "(N,)"))
    for ok, key, expected in checks:
        if not ok:
            value = getattr(arrays, key)
            raise DataError(path, f"array {key!r} is {value.dtype} {value.shape}, expected "
                                  f"{expected} with N = {n}")
    if n == 0:
        raise DataError(path, "holds no faces")
    return dataclasses.replace(arrays, landmarks=arrays.landmarks.astype(np.float32),
                               pose=arrays.pose.astype(np.float32),
                               box=arrays.box.astype(np.float32))
