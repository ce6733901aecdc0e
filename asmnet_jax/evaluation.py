"""The one evaluation: every face of a split through the model, per-face predictions back.

Training's validation (after each evaluated epoch, whichever input trains) and ``asmnet-eval``
(:mod:`asmnet_jax.evaluate`) both build an :class:`EvalSet` and call :meth:`EvalSet.predict`,
so the same weights on the same split give the same digits in both.

How a split is predicted: its stored crops (:class:`asmnet_jax.data.sources.HostArrays`) are
placed on the devices of the mesh once, sharded along ``data``
(:func:`asmnet_jax.data.resident.place`); one compiled call then warps each face's base crop on
the device (the box grown by the margin, :func:`asmnet_jax.data.resident.eval_images`) and runs
the model in chunks of ``batch_size / devices`` faces per device (``lax.map``, so one chunk's
activations are alive at a time). The labels are those of the same base crop, computed on the
host (:func:`asmnet_jax.data.crop.base_labels`). Nothing here needs grain or OpenCV.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Dict, List

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.experimental import multihost_utils
from jax.sharding import PartitionSpec as P

from asmnet_jax import landmarks as lm
from asmnet_jax import metrics
from asmnet_jax.data import crop, resident
from asmnet_jax.data.errors import DataError
from asmnet_jax.data.sources import ArraySource, HostArrays
from asmnet_jax.mesh import DATA_AXIS
from asmnet_jax.steps import eval_step

#: Compiled evaluations kept per process (one per model, mesh, size, chunk and flip).
_PROGRAMS_KEPT = 8


@dataclasses.dataclass
class FacePredictions:
    """Per-face results of one pass over a split, in the split's order.

    Landmarks are interleaved model vectors (N, 2n) and poses (N, 3) (yaw, pitch, roll) in model
    units (radians); see :mod:`asmnet_jax.landmarks`.
    """

    landmarks: np.ndarray      # (N, 2n) float32, predicted
    gt_landmarks: np.ndarray   # (N, 2n) ground truth of the evaluated (base) crop
    pose: np.ndarray           # (N, 3) float32 radians, predicted
    gt_pose: np.ndarray        # (N, 3) radians, label
    indices: np.ndarray        # (N,) int64 positions in the split
    names: List[str]           # (N,) example names

    def __len__(self) -> int:
        return int(self.indices.shape[0])

    @property
    def pose_deg(self) -> np.ndarray:
        """Predicted poses (N, 3) in degrees."""
        return lm.model_pose_to_degrees(self.pose)

    @property
    def gt_pose_deg(self) -> np.ndarray:
        """Pose labels (N, 3) in degrees."""
        return lm.model_pose_to_degrees(self.gt_pose)

    @property
    def has_pose(self) -> bool:
        """Whether every face has a finite pose label."""
        return len(self) > 0 and bool(np.isfinite(self.gt_pose).all())

    def nme(self, normaliser: str = "inter_ocular") -> np.ndarray:
        """Per-face NME (N,) as fractions (:func:`asmnet_jax.metrics.per_face_nme`)."""
        return metrics.per_face_nme(self.landmarks, self.gt_landmarks, normaliser)

    def summary(self, num_landmarks: int) -> Dict:
        """Validation's figures: inter-ocular NME (%), FR, AUC and pose MAE (degrees)."""
        nme = metrics.per_face_nme(self.landmarks, self.gt_landmarks, "inter_ocular",
                                   num_landmarks)
        return metrics.summarize(nme, pose_pred=self.pose_deg, pose_gt=self.gt_pose_deg)


def predict_shard(variables, data: Dict[str, jax.Array], *, model, input_size: int, chunk: int,
                  border_value: int = 0, flip_order=None) -> Dict[str, jax.Array]:
    """Predictions for every record of this device's shard of a placed set (m records, in shard
    order): the base warp and the model (:func:`asmnet_jax.steps.eval_step`), ``chunk`` records
    at a time, one chunk after the other."""
    shard_size = data["image"].shape[0]
    chunks = resident.eval_chunks(shard_size, chunk)
    rows = (jnp.arange(chunks * chunk) % shard_size).reshape(chunks, chunk)

    def one(index):
        part = {"image": data["image"][index], "matrix": data["matrix"][index]}
        images = resident.eval_images(part, input_size, border_value)
        return eval_step(variables, {"image": images}, model=model, flip_order=flip_order)

    out = lax.map(one, rows)
    return {key: value.reshape(chunks * chunk, *value.shape[2:])[:shard_size]
            for key, value in out.items()}


@functools.lru_cache(maxsize=_PROGRAMS_KEPT)
def compile_predict(model, mesh, input_size: int, chunk: int, border_value: int = 0,
                    flip: bool = False):
    """``predict(variables, data) -> {'landmarks' (D m, 2n), 'pose' (D m, 3)}`` for a whole placed
    set (:func:`predict_shard` on every shard), in the placed record order. ``flip`` averages each
    prediction with the mirrored one on the flipped crop (:func:`asmnet_jax.steps.eval_step`)."""
    flip_order = tuple(int(i) for i in lm.FLIP_ORDERS[model.num_landmarks]) if flip else None
    per_device = functools.partial(predict_shard, model=model, input_size=int(input_size),
                                   chunk=int(chunk), border_value=int(border_value),
                                   flip_order=flip_order)
    sharded = jax.shard_map(per_device, mesh=mesh, in_specs=(P(), P(DATA_AXIS)),
                            out_specs=P(DATA_AXIS))
    return jax.jit(sharded)


class EvalSet:
    """A split placed on the devices of ``mesh`` with its labels, ready to be predicted.

    Args:
      arrays: the split's stored crops and labels.
      model: the Flax module to evaluate (any ``bn_axis_name``: evaluation uses running
        statistics).
      mesh: the 1-D ``data`` mesh (training's, or the local devices' for ``asmnet-eval``).
      input_size, margin: the model input's side and the face box's margin.
      batch_size: faces per model call over all devices of the mesh (a multiple of their count):
        the same value gives the same digits.
    """

    def __init__(self, arrays: HostArrays, model, mesh, input_size: int, margin: float,
                 batch_size: int):
        if len(arrays) == 0:
            raise DataError("the evaluation split", "holds no faces")
        devices = mesh.devices.size
        if batch_size <= 0 or batch_size % devices:
            raise ValueError(f"the evaluation batch {batch_size} is not a positive multiple of "
                             f"the {devices} devices")
        self.arrays = arrays
        self.model, self.mesh = model, mesh
        self.input_size, self.chunk = int(input_size), batch_size // devices
        self.gt_landmarks, self.gt_pose = crop.base_labels(ArraySource(arrays), margin,
                                                           input_size)
        self.data = resident.place(arrays, margin, input_size, mesh)

    def __len__(self) -> int:
        return len(self.arrays)

    def predict(self, variables, flip: bool = False) -> FacePredictions:
        """Every face's prediction with ``variables`` (replicated on the mesh)."""
        predict = compile_predict(self.model, self.mesh, self.input_size, self.chunk, flip=flip)
        out = predict(variables, self.data)
        if all(value.is_fully_addressable for value in out.values()):
            out = jax.device_get(out)
        else:  # a mesh over several processes: every process gets every face
            out = multihost_utils.process_allgather(out, tiled=True)
        count = len(self.arrays)
        return FacePredictions(
            landmarks=np.asarray(out["landmarks"])[:count], gt_landmarks=self.gt_landmarks,
            pose=np.asarray(out["pose"])[:count], gt_pose=self.gt_pose,
            indices=np.arange(count, dtype=np.int64),
            names=[str(name) for name in self.arrays.name])

    def metrics(self, variables, flip: bool = False) -> Dict:
        """Training's validation figures (:meth:`FacePredictions.summary`)."""
        return self.predict(variables, flip).summary(self.model.num_landmarks)
