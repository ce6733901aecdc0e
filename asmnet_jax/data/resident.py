"""A data set held in device memory, and the batches the jitted steps cut from it.

Face-alignment sets are small (300W: 3,148 training faces; WFLW: 7,500): as uint8 crops at the
stored size they fit in an accelerator's memory many times over. With ``config.input="device"``
training loads the split once (:func:`arrays_from_source`, from TFDS or from a portable ``.npz``
export, :func:`save_npz` / :func:`load_npz`), places it on the devices sharded along the ``data``
mesh axis (:func:`place`), and every step builds its own batch on the device
(:func:`train_batch`): it picks the records, warps and augments them with
:mod:`asmnet_jax.data.device_augment`, and converts the labels to model units. Nothing goes
through the host between steps. Validation is one compiled call over the resident validation set
(:func:`eval_images`).

Order and randomness (the resident counterpart of :mod:`asmnet_jax.data.pipeline`'s rules)
----------------------------------------------------------------------------------------------
* The N records are split into D contiguous shards of ``m = ceil(N / D)`` records, one per device
  (when D does not divide N, the last shard is completed with records from the start of the set,
  so a few records appear twice per epoch; with one device every record appears once).
* Epoch ``e`` on device ``d`` visits its shard in the order of a permutation drawn from
  ``(key, e, d)``; step ``t`` of the epoch takes the next ``B / D`` records of it. An epoch has
  ``N // B`` steps (the partial last batch is dropped, as in the host pipeline).
* The augmentation of step ``k`` on device ``d`` is drawn from ``(key, k, d)``.

``key`` is the train state's key (drawn from ``config.seed`` when the state is created, and
checkpointed with it). Everything is a function of (key, step), computed inside the step from the
train state, so a run resumed at step k draws exactly the batches it would have drawn, and runs
that differ only in their seed share one compiled step. The draws are
not the host pipeline's (that uses NumPy generators): both paths give equally distributed, not
identical, batches.
"""

from __future__ import annotations

import dataclasses
import math
import os
import zipfile
from typing import Dict, List, Optional

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from asmnet_jax import landmarks as lm
from asmnet_jax.data import pipeline
from asmnet_jax.data import device_augment as dev_aug
from asmnet_jax.data.augment import AugmentConfig
from asmnet_jax.data.errors import DataError
from asmnet_jax.files import atomic_open
from asmnet_jax.steps import DATA_AXIS

#: The arrays of a resident set, and of a portable ``.npz`` export.
ARRAY_KEYS = ("image", "landmarks", "pose", "box", "name")
#: Salts that keep the record order and the augmentation draws independent.
_ORDER_SALT, _AUGMENT_SALT, _SAMPLE_SALT = 0x0D0E, 0xA06E, 0x5A3E
#: ``input="auto"`` keeps a set on the device when one shard needs at most this fraction of the
#: device's memory (the rest is the model's, its activations and the compiler's).
AUTO_MEMORY_FRACTION = 0.25


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


def arrays_from_source(source, num_landmarks: int, what: str = "the source") -> HostArrays:
    """Reads every example of a random-access ``source`` (:mod:`asmnet_jax.data.pipeline`) into
    :class:`HostArrays`. All crops must have one size; the first that differs is named."""
    count = len(source)
    if count == 0:
        raise DataError(what, "holds no faces")
    first = source[0]
    shape = np.asarray(first["image"]).shape
    if len(shape) != 3 or shape[2] != 3:
        raise DataError(what, f"example {_name(first, 0)!r} has an image of shape {shape}, "
                              "expected (H, W, 3)")
    images = np.empty((count, *shape), np.uint8)
    landmarks = np.empty((count, num_landmarks, 2), np.float32)
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
        landmarks[index] = points
        poses[index] = np.asarray(example["pose"], np.float32)
        boxes[index] = np.asarray(example["box"], np.float32)
        names.append(_name(example, index))
    return HostArrays(images, landmarks, poses, boxes, np.asarray(names))


def _name(example, index) -> str:
    name = example.get("name", index)
    return name.decode("utf-8") if isinstance(name, bytes) else str(name)


# ---------------------------------------------------------------------------------------------
# The portable export


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


class ArraySource:
    """:class:`HostArrays` as a random-access source (the host pipeline, ASM fitting and
    ``asmnet-eval`` read a ``.npz`` export through it)."""

    def __init__(self, arrays: HostArrays):
        self.arrays = arrays

    def __len__(self) -> int:
        return len(self.arrays)

    def __getitem__(self, index: int) -> Dict:
        a = self.arrays
        return {"image": a.image[index], "landmarks": a.landmarks[index], "pose": a.pose[index],
                "box": a.box[index], "name": str(a.name[index])}


# ---------------------------------------------------------------------------------------------
# Placement


def shard_records(count: int, num_devices: int) -> int:
    """Records per device shard, ``ceil(count / num_devices)``."""
    return -(-int(count) // int(num_devices))


def placed_order(count: int, num_devices: int) -> np.ndarray:
    """The record placed at each position of a set spread over ``num_devices`` shards: the records
    in order, then records from the start again until every shard is full."""
    return np.arange(shard_records(count, num_devices) * int(num_devices)) % int(count)


def device_memory_bytes(device=None) -> Optional[int]:
    """The memory of ``device`` (default: the first) in bytes: its allocator's limit on an
    accelerator, the machine's RAM on the CPU; None when unknown."""
    device = device or jax.devices()[0]
    stats = None
    try:
        stats = device.memory_stats()
    except Exception:  # noqa: BLE001 - a backend without memory statistics
        stats = None
    if stats and stats.get("bytes_limit"):
        return int(stats["bytes_limit"])
    if device.platform == "cpu":
        try:
            return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
        except (ValueError, OSError, AttributeError):
            return None
    return None


def fits(arrays_bytes: int, num_devices: int, memory_bytes: Optional[int],
         fraction: float = AUTO_MEMORY_FRACTION) -> bool:
    """Whether one device shard of a set of ``arrays_bytes`` takes at most ``fraction`` of a
    device's ``memory_bytes`` (unknown memory: no)."""
    if not memory_bytes:
        return False
    return arrays_bytes / max(int(num_devices), 1) <= fraction * memory_bytes


def place(arrays: HostArrays, margin: float, input_size: int, mesh) -> Dict[str, jax.Array]:
    """Puts a set on the devices of ``mesh``, sharded along ``data`` (:func:`shard_records`
    records each, the last shard completed from the start of the set).

    Returns global arrays: ``image`` (D m, H, W, 3) uint8, ``landmarks`` (D m, n, 2) float32 stored
    pixels, ``pose`` (D m, 3) float32 degrees and ``matrix`` (D m, 2, 3) float32, the base transform
    from stored pixels to the model input (the box grown by ``margin``). Every process holds the
    whole set in host memory and places the shards of its own devices.
    """
    count = len(arrays)
    order = placed_order(count, mesh.devices.size)
    host = {"image": arrays.image, "landmarks": arrays.landmarks, "pose": arrays.pose,
            "matrix": base_matrices(arrays, margin, input_size)}
    sharding = NamedSharding(mesh, P(DATA_AXIS))

    def put(value):
        value = value[order] if len(order) != count else value
        return jax.make_array_from_callback(value.shape, sharding, lambda index: value[index])

    return {key: put(value) for key, value in host.items()}


# ---------------------------------------------------------------------------------------------
# Batches inside the step


@dataclasses.dataclass(frozen=True)
class ResidentSpec:
    """The static settings of the batches a train step cuts from a resident set (hashable: part
    of the compiled step's cache key)."""

    local_batch: int            # B / D records per device and step
    steps_per_epoch: int        # N // B
    input_size: int             # S
    augment: AugmentConfig


def _device_key(key: jax.Array, salt: int, counter, device) -> jax.Array:
    key = jax.random.fold_in(key, salt)
    return jax.random.fold_in(jax.random.fold_in(key, counter), device)


def batch_records(step, spec: ResidentSpec, shard_size: int, device, key: jax.Array
                  ) -> jax.Array:
    """Positions in this device's shard (``local_batch``,) int32 of the records of global step
    ``step`` (traced): the epoch's permutation, drawn from (key, epoch, device), sliced."""
    epoch = step // spec.steps_per_epoch
    within = step % spec.steps_per_epoch
    order = jax.random.permutation(_device_key(key, _ORDER_SALT, epoch, device), shard_size)
    return jax.lax.dynamic_slice(order, (within * spec.local_batch,), (spec.local_batch,))


def _to_model_units(images, points, pose_deg, input_size: int) -> Dict[str, jax.Array]:
    """Warped images in [0, 255], pixel landmarks (B, n, 2) and degrees -> the batch the steps
    read (images in [0, 1] float32, :mod:`asmnet_jax.landmarks` units)."""
    return {"image": images * jnp.float32(1.0 / 255.0),
            "landmarks": lm.pixels_to_model(points, input_size),
            "pose": lm.degrees_to_model_pose(pose_deg)}


def train_batch(data: Dict[str, jax.Array], step, spec: ResidentSpec, key: jax.Array
                ) -> Dict[str, jax.Array]:
    """This device's part of training batch ``step`` (call under ``shard_map`` over ``data``, with
    ``data`` this device's shard from :func:`place`): ``image`` (b, S, S, 3) float32 in [0, 1],
    ``landmarks`` (b, 2n), ``pose`` (b, 3) radians and ``mask`` (b,) ones. ``key``: the run's
    key (the train state's), from which records and augmentation are drawn."""
    device = jax.lax.axis_index(DATA_AXIS)
    shard_size = data["image"].shape[0]
    rows = batch_records(step, spec, shard_size, device, key)
    params = dev_aug.draw(_device_key(key, _AUGMENT_SALT, step, device), spec.local_batch,
                          spec.augment, spec.input_size)
    images, points, pose = dev_aug.apply(data["image"][rows], data["landmarks"][rows],
                                         data["pose"][rows], data["matrix"][rows], params,
                                         spec.input_size, spec.augment)
    batch = _to_model_units(images, points, pose, spec.input_size)
    batch["mask"] = jnp.ones((spec.local_batch,), jnp.float32)
    return batch


def base_matrices(arrays: HostArrays, margin: float, input_size: int) -> np.ndarray:
    """(N, 2, 3) float32: each stored crop's face box grown by ``margin`` onto the S x S input."""
    return np.stack([pipeline.base_matrix(box, margin, input_size)
                     for box in arrays.box]).astype(np.float32)


def augmented_images(arrays: HostArrays, margin: float, input_size: int, augment: AugmentConfig,
                     seed: int, batch_size: int, batches: int) -> List[np.ndarray]:
    """``batches`` batches of augmented training crops, (b, S, S, 3) float32 in [0, 1], made on
    the default device from records drawn without replacement (what BN re-estimation looks at
    before a run from ImageNet weights; no grain or OpenCV needed)."""
    rng = np.random.default_rng([seed, _SAMPLE_SALT])
    batch_size = min(int(batch_size), len(arrays))
    rows = rng.permutation(len(arrays))[:batch_size * max(int(batches), 1)]
    matrices = base_matrices(arrays, margin, input_size)
    out = []
    for k in range(len(rows) // batch_size):
        part = rows[k * batch_size:(k + 1) * batch_size]
        key = jax.random.fold_in(jax.random.fold_in(jax.random.key(seed), _SAMPLE_SALT), k)
        params = dev_aug.draw(key, batch_size, augment, input_size)
        images, _, _ = dev_aug.apply(arrays.image[part], arrays.landmarks[part], arrays.pose[part],
                                     matrices[part], params, input_size, augment)
        out.append(np.asarray(images) / np.float32(255.0))
    return out


def eval_images(data: Dict[str, jax.Array], input_size: int, border_value: int = 0):
    """The evaluation crops of a resident shard: (m, S, S, 3) float32 in [0, 1], the base warp
    only (the host's ``augment.eval_transform``)."""
    return dev_aug.warp(data["image"], data["matrix"], input_size,
                        float(border_value)) * jnp.float32(1.0 / 255.0)


def eval_chunks(shard_size: int, local_batch: int) -> int:
    """How many chunks of at most ``local_batch`` records an evaluation of a shard of
    ``shard_size`` runs (each chunk compiled once, run by ``lax.map``)."""
    return max(1, math.ceil(shard_size / max(local_batch, 1)))
