"""The one ``data`` mesh axis and the placement helpers that the step, the inputs and the
evaluation share.

Every compiled program of the project is a ``jax.jit`` over ``jax.shard_map`` on a 1-D mesh whose
axis is :data:`DATA_AXIS`: batches and resident data sets are split along it, the train state and
the shape model are replicated over it, and the per-device code reduces over it with
``lax.pmean`` / ``lax.psum``. This module imports nothing else of the package, so the train step
(:mod:`asmnet_jax.steps`) and the data side (:mod:`asmnet_jax.data.resident`,
:mod:`asmnet_jax.data.inputs`) both import it without importing each other.
"""

from __future__ import annotations

import os
from typing import Optional

import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

DATA_AXIS = "data"


def make_mesh(devices=None) -> jax.sharding.Mesh:
    """A 1-D mesh over all (or the given) devices with the axis ``data``."""
    devices = jax.devices() if devices is None else list(devices)
    return jax.make_mesh((len(devices),), (DATA_AXIS,), devices=devices)


def replicate(tree, mesh):
    """Places a pytree on every device of ``mesh`` (replicated). Goes through host NumPy arrays,
    which every process of a multi-host run holds identically."""
    host = jax.tree_util.tree_map(np.asarray, tree)
    return jax.device_put(host, NamedSharding(mesh, P()))


def batch_sharding(mesh) -> NamedSharding:
    """Arrays split along their first axis over the ``data`` axis of ``mesh``."""
    return NamedSharding(mesh, P(DATA_AXIS))


def host_copy(tree):
    """NumPy copy of a replicated pytree, read from this process's first device (works when the
    arrays span several processes, where ``jax.device_get`` cannot)."""
    return jax.tree_util.tree_map(lambda x: np.asarray(x.addressable_data(0)), tree)


def device_memory_bytes(device=None) -> Optional[int]:
    """The memory of ``device`` (default: the first) in bytes: its allocator's limit on an
    accelerator, the machine's RAM on the CPU; None when unknown."""
    device = device or jax.devices()[0]
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
