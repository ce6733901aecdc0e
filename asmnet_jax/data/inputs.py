"""Training inputs: where the train step's batches come from, behind one small interface.

Two implementations, chosen by ``config.input`` (:func:`make_input`):

* :class:`DeviceInput` (``"device"``): the training split sits in device memory, sharded over
  the ``data`` axis (:mod:`asmnet_jax.data.resident`), and the compiled step cuts and augments
  its own batch from it (jnp, from the state's key and step). Nothing crosses from the host
  between steps; no grain or OpenCV is needed.
* :class:`HostInput` (``"host"``): grain reads and OpenCV augments each batch on the host
  (:mod:`asmnet_jax.data.pipeline`), streamed, so the split may be larger than device memory.

``"auto"`` is ``"device"`` when one device's shard of the split takes at most
:data:`AUTO_MEMORY_FRACTION` of its memory.

Each input gives the loop what it needs and nothing else:

* ``compile_step(model, optimizer, settings, teacher=None)``: the compiled train step for this
  input (with a distillation :class:`asmnet_jax.steps.Teacher`, or without);
* ``batches(start_step)``: an iterator of what to pass the step at each step from
  ``start_step`` on (a sharded batch, or the resident set again);
* ``bn_images(count, batch_size)``: augmented training crops for BN re-estimation;
* ``sample_batch(key)``: one training batch on the devices, as the plain step
  (:func:`asmnet_jax.steps.train_step` without ``make_batch``) takes it (benchmarks, tests);
* ``source`` and ``len(input)``: the training faces (labels for the ASM and the heads).

Validation does not depend on the input: :mod:`asmnet_jax.evaluation` predicts the same way for
both.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import time
from typing import Dict, Iterator, List

import jax
import numpy as np
from jax.sharding import PartitionSpec as P

from asmnet_jax import steps
from asmnet_jax.data import resident, sources
from asmnet_jax.data.augment import AugmentConfig
from asmnet_jax.mesh import DATA_AXIS, batch_sharding, device_memory_bytes

log = logging.getLogger(__name__)

#: ``input="auto"`` keeps a set on the device when one shard needs at most this fraction of the
#: device's memory (the rest is the model's, its activations and the compiler's).
AUTO_MEMORY_FRACTION = 0.25


def fits(arrays_bytes: int, num_devices: int, memory_bytes, fraction: float = AUTO_MEMORY_FRACTION
         ) -> bool:
    """Whether one device shard of a set of ``arrays_bytes`` takes at most ``fraction`` of a
    device's ``memory_bytes`` (unknown memory: no)."""
    if not memory_bytes:
        return False
    return arrays_bytes / max(int(num_devices), 1) <= fraction * memory_bytes


def resolve_input(config, train_source) -> str:
    """``config.input`` with "auto" decided from the size of ``train_source``."""
    if config.input != "auto":
        return config.input
    image = np.asarray(train_source[0]["image"])
    estimate = len(train_source) * (image.nbytes + 4 * (2 * config.num_landmarks + 6))
    return "device" if fits(estimate, jax.device_count(), device_memory_bytes()) else "host"


def make_input(config, train_source, mesh, steps_per_epoch: int):
    """The training input for ``config`` over ``train_source`` (any source of
    :mod:`asmnet_jax.data.sources`) on ``mesh``."""
    if resolve_input(config, train_source) == "device":
        return DeviceInput(config, train_source, mesh, steps_per_epoch)
    return HostInput(config, train_source, mesh)


class DeviceInput:
    """The training split in device memory; the step makes its own batches."""

    kind = "device"

    def __init__(self, config, train_source, mesh, steps_per_epoch: int):
        start = time.perf_counter()
        self.arrays = sources.host_arrays(train_source, config.num_landmarks,
                                          "the training split")
        self.source = sources.ArraySource(self.arrays)
        self.mesh = mesh
        self.margin, self.input_size, self.seed = config.margin, config.input_size, config.seed
        self.augment = AugmentConfig.from_dict(config.augment)
        self.spec = resident.ResidentSpec(
            local_batch=config.batch_size // mesh.devices.size, steps_per_epoch=steps_per_epoch,
            input_size=config.input_size, augment=self.augment)
        self.data = resident.place(self.arrays, config.margin, config.input_size, mesh)
        log.info("input on the device: %d training faces (%.0f MB) read and placed in %.1f s",
                 len(self.arrays), self.arrays.nbytes / 1e6, time.perf_counter() - start)

    def __len__(self) -> int:
        return len(self.arrays)

    def compile_step(self, model, optimizer, settings, teacher=None):
        return steps.compile_train_step(model, optimizer, settings, self.mesh, self.spec,
                                        teacher)

    def batches(self, start_step: int) -> Iterator:
        del start_step  # the step cuts batch k from the state's step and key
        return itertools.repeat(self.data)

    def sample_batch(self, key: jax.Array) -> Dict[str, jax.Array]:
        cut = jax.shard_map(lambda data, k: self.spec(data, 0, jax.random.wrap_key_data(k)),
                            mesh=self.mesh, in_specs=(P(DATA_AXIS), P()),
                            out_specs=P(DATA_AXIS))
        return jax.jit(cut)(self.data, jax.random.key_data(key))

    def bn_images(self, count: int, batch_size: int) -> List[np.ndarray]:
        return resident.augmented_images(self.arrays, self.margin, self.input_size,
                                         self.augment, self.seed, batch_size,
                                         max(1, count // batch_size))


class HostInput:
    """Batches read and augmented on the host by grain and OpenCV, streamed to the devices."""

    kind = "host"

    def __init__(self, config, train_source, mesh):
        # grain and OpenCV only for this input: the device input runs without them (the GPU
        # machines have neither).
        from asmnet_jax.data import pipeline

        self._pipeline = pipeline
        self.source = train_source
        self.mesh = mesh
        self.process_index, self.process_count = jax.process_index(), jax.process_count()
        self.config = pipeline.PipelineConfig(
            batch_size=config.batch_size, input_size=config.input_size, margin=config.margin,
            num_landmarks=config.num_landmarks, seed=config.seed,
            num_workers=config.num_workers, augment=AugmentConfig.from_dict(config.augment))

    def __len__(self) -> int:
        return len(self.source)

    def compile_step(self, model, optimizer, settings, teacher=None):
        return steps.compile_train_step(model, optimizer, settings, self.mesh, None, teacher)

    def batches(self, start_step: int) -> Iterator:
        pipeline = self._pipeline
        host = pipeline.iterate(
            pipeline.train_dataset(self.source, self.config, self.process_index,
                                   self.process_count),
            start=start_step, num_workers=self.config.num_workers)
        sharding = batch_sharding(self.mesh)
        return (pipeline.device_batch(batch, sharding) for batch in host)

    def sample_batch(self, key: jax.Array) -> Dict[str, jax.Array]:
        del key  # batch 0 of the run's seeded stream
        return next(self.batches(0))

    def bn_images(self, count: int, batch_size: int) -> List[np.ndarray]:
        dataset = self._pipeline.train_dataset(
            self.source, dataclasses.replace(self.config, batch_size=batch_size))
        return [dataset[k]["image"] for k in range(max(1, count // batch_size))]
