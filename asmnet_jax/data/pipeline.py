"""The host input pipeline (grain): stored examples -> augmented, batched training arrays.

This is the training input for data sets larger than device memory
(:class:`asmnet_jax.data.inputs.HostInput`): grain reads the records of a source
(:mod:`asmnet_jax.data.sources`), OpenCV augments them (:mod:`asmnet_jax.data.augment`), and
the batches are assembled into global arrays sharded over the ``data`` axis. It is the only
module that uses grain.

A batch (docs/method.md section 5.5) is a dict: ``image`` uint8 (B, S, S, 3) RGB (a quarter of
the bytes of float32 between processes and to the device; :func:`asmnet_jax.steps.images_to_unit`
scales it to [0, 1] inside the jitted step), ``landmarks`` float32 (B, 2n) and ``pose`` float32
(B, 3) in the model's units (:mod:`asmnet_jax.landmarks`), ``mask`` float32 (B,), and the
host-only keys ``name`` and ``index``.

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

import grain
import jax
import numpy as np
from absl import flags

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
        matrix = crop.base_matrix(example["box"], config.margin, config.input_size)
        image, points, pose, _ = aug.augment(
            example["image"], np.asarray(example["landmarks"], np.float32),
            np.asarray(example["pose"], np.float32), matrix, config.input_size,
            augment_config, rng)
        return _finish(image, points, pose, example, index, config.num_landmarks,
                       config.input_size)

    return transform


def _with_index(source) -> grain.MapDataset:
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


def _ensure_absl_flags() -> None:
    """grain's worker processes read absl flags; outside an absl app they are never parsed."""
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
    return {key: jax.make_array_from_process_local_data(sharding, np.asarray(value))
            for key, value in batch.items() if key not in HOST_KEYS}
