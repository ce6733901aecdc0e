"""The input pipeline: stored examples -> augmented, batched, device-sharded arrays.

A *source* is anything with ``__len__`` and ``__getitem__(index) -> example`` (a grain
``RandomAccessDataSource``: a TFDS array_record data source, or :class:`SyntheticSource`). An
example is a dict:

* ``image``: uint8 (h, w, 3) RGB, a face crop larger than the model input (context for
  augmentation);
* ``landmarks``: float32 (n, 2), 0-based pixel coordinates in that crop;
* ``pose``: float32 (3,), yaw, pitch, roll in degrees (:mod:`asmnet_jax.data.pose`);
* ``box``: float32 (3,), the square face box (centre x, centre y, side) in crop pixels, without
  margin; the pipeline adds ``margin`` on each side and maps that square onto the model input;
* ``name``: str, plus optional bookkeeping (subset flags).

A batch (docs/method.md section 5.5) is a dict: ``image`` uint8 (B, S, S, 3) RGB (a quarter of
the bytes of float32 between processes and to the device; :func:`asmnet_jax.steps.images_to_unit`
scales it to [0, 1] inside the jitted step), ``landmarks`` float32
(B, 2n) and ``pose`` float32 (B, 3) in the model's units (:mod:`asmnet_jax.landmarks`), ``mask``
float32 (B,) (0 for padding in the last evaluation batch), and the host-only keys ``name`` and
``index``.

Order and randomness are functions of (seed, position) only, through grain's ``MapDataset``: record
``j`` of the training stream is the ``j % N``-th element of a per-epoch permutation, its
augmentation is drawn from a generator seeded by (seed, j), and global batch ``k`` holds records
``k B .. (k + 1) B - 1``. Process ``p`` of ``P`` takes every P-th of those records, so the processes
of a multi-host run together read exactly the global batch, and a run resumed at step k reads
exactly the batches that would have come.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Dict, Iterator, Mapping, Optional

import numpy as np

from asmnet_jax import landmarks as lm
from asmnet_jax.data import augment as aug
from asmnet_jax.data import crop

HOST_KEYS = ("name", "index")


@dataclasses.dataclass(frozen=True)
class PipelineConfig:
    """How examples become batches. ``batch_size`` is the global batch (all processes)."""

    batch_size: int = 32
    input_size: int = 224
    margin: float = 0.1
    num_landmarks: int = 68
    seed: int = 0
    num_workers: int = 0
    prefetch_buffer: int = 2
    augment: Optional[aug.AugmentConfig] = None

    def __post_init__(self):
        if self.batch_size <= 0:
            raise ValueError(f"batch_size must be positive, got {self.batch_size}")
        if self.input_size <= 0 or self.input_size % 32:
            raise ValueError(f"input_size must be a positive multiple of 32, got {self.input_size}")
        lm.check_num_landmarks(self.num_landmarks)


def base_matrix(box, margin: float, input_size: int) -> np.ndarray:
    """(2, 3) transform from crop pixels to the model input: the face box grown by ``margin`` on
    each side (so its side is ``side * (1 + 2 margin)``) fills the S x S input."""
    cx, cy, side = (float(v) for v in box)
    return crop.crop_transform((cx, cy, crop.grown_side(side, margin)), input_size)


def _text(value) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def _finish(image, points, pose_deg, example, index, num_landmarks, input_size):
    if points.shape != (num_landmarks, 2):
        raise ValueError(f"example {example.get('name', index)!r} has landmarks of shape "
                         f"{points.shape}, expected ({num_landmarks}, 2)")
    return {
        "image": np.ascontiguousarray(image, dtype=np.uint8),
        "landmarks": lm.pixels_to_model(points, input_size).astype(np.float32),
        "pose": lm.degrees_to_model_pose(pose_deg).astype(np.float32),
        "mask": np.float32(1.0),
        "name": _text(example.get("name", index)),
        "index": np.int64(index),
    }


def _train_transform(config: PipelineConfig):
    augment_config = config.augment or aug.AugmentConfig()

    def transform(item, rng: np.random.Generator):
        index, example = item
        matrix = base_matrix(example["box"], config.margin, config.input_size)
        image, points, pose, _ = aug.augment(
            example["image"], np.asarray(example["landmarks"], np.float32),
            np.asarray(example["pose"], np.float32), matrix, config.input_size,
            augment_config, rng)
        return _finish(image, points, pose, example, index, config.num_landmarks,
                       config.input_size)

    return transform


def _eval_transform(config: PipelineConfig):
    def transform(item):
        index, example = item
        matrix = base_matrix(example["box"], config.margin, config.input_size)
        image, points, pose, _ = aug.eval_transform(
            example["image"], np.asarray(example["landmarks"], np.float32),
            np.asarray(example["pose"], np.float32), matrix, config.input_size)
        return _finish(image, points, pose, example, index, config.num_landmarks,
                       config.input_size)

    return transform


def _with_index(source) -> grain.MapDataset:
    import grain  # here: the device input path trains without grain

    # grain hands the position in a repeated stream down to the source; reduce it modulo N.
    count = len(source)
    return grain.MapDataset.source(source).map_with_index(
        lambda i, example: (i % count, example))


def _local_batch_size(config: PipelineConfig, process_count: int) -> int:
    if config.batch_size % process_count:
        raise ValueError(f"batch_size {config.batch_size} is not divisible by the "
                         f"{process_count} processes")
    return config.batch_size // process_count


def train_dataset(source, config: PipelineConfig, process_index: int = 0,
                  process_count: int = 1) -> grain.MapDataset:
    """Endless, shuffled (per epoch), augmented batches for this process: ``ds[k]`` is its part of
    global batch ``k``. Record order and augmentation depend only on ``config.seed``."""
    if len(source) == 0:
        raise ValueError("the training source is empty")
    local = _local_batch_size(config, process_count)
    records = (_with_index(source).seed(config.seed).shuffle().repeat()
               .random_map(_train_transform(config)))
    if process_count > 1:
        records = records[process_index::process_count]
    return records.batch(local, drop_remainder=True)


def _pad(batch: Dict[str, np.ndarray], size: int) -> Dict[str, np.ndarray]:
    count = len(batch["mask"])
    if count == size:
        return batch
    out = {}
    for key, value in batch.items():
        value = np.asarray(value)
        filler = np.repeat(value[-1:], size - count, axis=0)
        out[key] = np.concatenate([value, filler], axis=0)
    out["mask"][count:] = 0.0
    return out


def eval_dataset(source, config: PipelineConfig, process_index: int = 0,
                 process_count: int = 1) -> grain.MapDataset:
    """One ordered pass without augmentation; the last batch is padded (``mask`` 0) so every batch
    has the same shape. Process p reads records p, p + P, ..."""
    local = _local_batch_size(config, process_count)
    records = _with_index(source).map(_eval_transform(config))
    if process_count > 1:
        records = records[process_index::process_count]
    return records.batch(local, drop_remainder=False).map(lambda b: _pad(b, local))


def _ensure_absl_flags() -> None:
    """grain's worker processes read absl flags; outside an absl app they are never parsed."""
    from absl import flags

    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()


def iterate(dataset: grain.MapDataset, start: int = 0, num_workers: int = 0,
            prefetch_buffer: int = 2) -> Iterator[Dict[str, np.ndarray]]:
    """Iterates ``dataset`` from batch ``start``, with ``num_workers`` worker processes.

    ``dataset`` yields whole batches, so grain's default read-ahead (16 threads, 500 elements)
    would hold hundreds of batches and keep 16 Python threads contending for the interpreter
    while the step compiles. Batches are read ahead by one thread per core (one per worker
    process when there are workers), at most ``max(prefetch_buffer, threads)`` of them.
    """
    import grain

    threads = 1 if num_workers > 0 else max(1, min(16, os.cpu_count() or 1))
    read_options = grain.ReadOptions(num_threads=threads,
                                     prefetch_buffer_size=max(prefetch_buffer, threads))
    iter_ds = dataset[start:].to_iter_dataset(read_options)
    if num_workers > 0:
        _ensure_absl_flags()
        iter_ds = iter_ds.mp_prefetch(grain.MultiprocessingOptions(
            num_workers=num_workers, per_worker_buffer_size=prefetch_buffer))
    return iter(iter_ds)


def device_batch(batch: Mapping[str, Any], sharding) -> Dict[str, Any]:
    """Host batch -> global jax.Arrays sharded along the batch axis (host-only keys dropped).

    ``sharding`` is a ``NamedSharding`` over the 'data' mesh axis; each process passes its own
    part and JAX assembles the global array.
    """
    import jax

    return {key: jax.make_array_from_process_local_data(sharding, np.asarray(value))
            for key, value in batch.items() if key not in HOST_KEYS}


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
        from asmnet_jax.data import examples

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
        from asmnet_jax.data import examples

        return examples.synthetic_example(self._seed, index, self._store_size,
                                          self._num_landmarks, split=self._split)

    def __repr__(self) -> str:
        return f"SyntheticSource(count={self._count}, seed={self._seed})"


def synthetic_split(split: str, count: int, seed: int, num_landmarks: int, input_size: int,
                    in_memory: bool = False):
    """Split ``split`` of a run's synthetic faces (config ``synthetic.SPLIT`` faces and
    ``synthetic.seed``), stored at the crop size that ``input_size`` implies: the faces training
    renders and ``asmnet-eval`` re-renders, the same for the same arguments. ``in_memory``:
    rendered now into an :class:`InMemorySource` (training reads each face many times), else on
    demand."""
    from asmnet_jax.data import examples

    source = SyntheticSource(count, examples.synthetic_seed(seed, split), num_landmarks,
                             examples.synthetic_store_size(input_size), split=split)
    if in_memory:
        return InMemorySource(source[i] for i in range(len(source)))
    return source
