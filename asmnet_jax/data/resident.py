"""A data set held in device memory, and the batches the jitted steps cut from it.

Face-alignment sets are small (300W: 3,148 training faces; WFLW: 7,500): as uint8 crops at the
stored size they fit in an accelerator's memory many times over. With ``config.input="device"``
training loads the split once (:class:`asmnet_jax.data.sources.HostArrays`, from TFDS or from a
portable ``.npz`` export), places it on the devices sharded along the ``data``
mesh axis (:func:`place`), and every step builds its own batch on the device
(:func:`train_batch`): it picks the records, warps and augments them with
:mod:`asmnet_jax.data.device_augment`, and converts the labels to model units. Nothing goes
through the host between steps. The evaluation (:mod:`asmnet_jax.evaluation`) places the faces
it predicts the same way and crops them with :func:`eval_images`.

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
from typing import Dict, List

import jax
import jax.numpy as jnp
import numpy as np

from asmnet_jax import landmarks as lm
from asmnet_jax.data import crop
from asmnet_jax.data import device_augment as dev_aug
from asmnet_jax.data.augment import AugmentConfig
from asmnet_jax.data.sources import HostArrays
from asmnet_jax.mesh import DATA_AXIS, batch_sharding

#: Salts that keep the record order and the augmentation draws independent.
_ORDER_SALT, _AUGMENT_SALT, _SAMPLE_SALT = 0x0D0E, 0xA06E, 0x5A3E


# ---------------------------------------------------------------------------------------------
# Placement


def shard_records(count: int, num_devices: int) -> int:
    """Records per device shard, ``ceil(count / num_devices)``."""
    return -(-int(count) // int(num_devices))


def placed_order(count: int, num_devices: int) -> np.ndarray:
    """The record placed at each position of a set spread over ``num_devices`` shards: the records
    in order, then records from the start again until every shard is full."""
    return np.arange(shard_records(count, num_devices) * int(num_devices)) % int(count)


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
            "matrix": crop.base_matrices(arrays.box, margin, input_size)}
    sharding = batch_sharding(mesh)

    def put(value):
        value = value[order] if len(order) != count else value
        return jax.make_array_from_callback(value.shape, sharding, lambda index: value[index])

    return {key: put(value) for key, value in host.items()}


# ---------------------------------------------------------------------------------------------
# Batches inside the step


@dataclasses.dataclass(frozen=True)
class ResidentSpec:
    """The per-device batch function of a resident set, and its static settings (hashable: part
    of the compiled step's cache key). ``spec(data, step, key)`` is :func:`train_batch`: what
    :func:`asmnet_jax.steps.train_step` calls as its ``make_batch``."""

    local_batch: int            # B / D records per device and step
    steps_per_epoch: int        # N // B
    input_size: int             # S
    augment: AugmentConfig

    def __call__(self, data: Dict[str, jax.Array], step, key: jax.Array) -> Dict[str, jax.Array]:
        return train_batch(data, step, self, key)


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


def augmented_images(arrays: HostArrays, margin: float, input_size: int, augment: AugmentConfig,
                     seed: int, batch_size: int, batches: int) -> List[np.ndarray]:
    """``batches`` batches of augmented training crops, (b, S, S, 3) float32 in [0, 1], made on
    the default device from records drawn without replacement (what BN re-estimation looks at
    before a run from ImageNet weights; no grain or OpenCV needed)."""
    rng = np.random.default_rng([seed, _SAMPLE_SALT])
    batch_size = min(int(batch_size), len(arrays))
    rows = rng.permutation(len(arrays))[:batch_size * max(int(batches), 1)]
    matrices = crop.base_matrices(arrays.box, margin, input_size)
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
