"""The project's one evaluation loop: every face of a source through a compiled eval step.

Training's validation (:func:`validation_metrics`, after each evaluated epoch) and
``asmnet-eval`` (:func:`asmnet_jax.evaluate.evaluate_checkpoint`) both run
:func:`predict_faces`; the summaries, reports and plots of ``asmnet-eval`` are in
:mod:`asmnet_jax.evaluate`.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Dict, List

import jax
import numpy as np
from jax.experimental import multihost_utils

from asmnet_jax import landmarks as lm
from asmnet_jax import metrics
from asmnet_jax import steps as steps_lib
from asmnet_jax.data import pipeline
from asmnet_jax.data.errors import DataError

#: Bytes per example name when names travel between processes.
NAME_BYTES = 256


@dataclasses.dataclass
class FacePredictions:
    """Per-face results of one pass over a source, in source order, padding dropped.

    Landmarks are interleaved model vectors (N, 2n) and poses (N, 3) (yaw, pitch, roll) in model
    units (radians); see :mod:`asmnet_jax.landmarks`.
    """

    landmarks: np.ndarray      # (N, 2n) float32, predicted
    gt_landmarks: np.ndarray   # (N, 2n) float32, ground truth of the evaluated crop
    pose: np.ndarray           # (N, 3) float32 radians, predicted
    gt_pose: np.ndarray        # (N, 3) float32 radians, label
    indices: np.ndarray        # (N,) int64 positions in the source
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


def _encode_names(names, width: int = NAME_BYTES) -> np.ndarray:
    """Names (B,) -> uint8 (B, width), UTF-8, zero-padded (longer names are cut)."""
    out = np.zeros((len(names), width), np.uint8)
    for row, name in enumerate(names):
        data = str(name).encode("utf-8")[:width]
        out[row, :len(data)] = np.frombuffer(data, np.uint8)
    return out


def _decode_names(codes) -> List[str]:
    """Inverse of :func:`_encode_names`."""
    return [bytes(row).rstrip(b"\0").decode("utf-8", errors="replace")
            for row in np.asarray(codes, np.uint8)]


def predict_faces(predict, variables, source, pcfg: pipeline.PipelineConfig, mesh,
                  process_index: int = 0, process_count: int = 1) -> FacePredictions:
    """Predicts every face of ``source`` (no augmentation): the project's one evaluation loop.

    Args:
      predict: ``predict(variables, device_batch) -> {'landmarks' (B, 2n), 'pose' (B, 3)}``, from
        :func:`asmnet_jax.steps.compile_eval_step` on ``mesh``.
      variables: the model's variables, replicated on ``mesh``.
      source: random-access examples (:mod:`asmnet_jax.data.pipeline`).
      pcfg: ``batch_size`` (global, all processes), ``input_size``, ``margin``, ``num_landmarks``.
      mesh: the 1-D ``data`` mesh the batch is sharded over.
      process_index, process_count: this process of a multi-process run. Each process reads every
        ``process_count``-th record; all processes run the same number of batches (one that has
        run out feeds a fully masked copy) and all receive every face.

    Returns:
      :class:`FacePredictions` of all ``len(source)`` faces in source order. The last batch is
      padded to full size and its padding dropped through the ``mask``, so one compilation serves
      every batch.
    """
    if len(source) == 0:
        raise DataError("the evaluation source", "holds no faces")
    dataset = pipeline.eval_dataset(source, pcfg, process_index, process_count)
    local = pcfg.batch_size // process_count
    num_batches = math.ceil(len(source) / pcfg.batch_size)
    sharding = steps_lib.batch_sharding(mesh)
    keys = ("landmarks", "pose", "gt_landmarks", "gt_pose", "mask", "index")
    parts: Dict[str, list] = {key: [] for key in keys}
    names: List[str] = []
    for k in range(num_batches):
        if k < len(dataset):
            batch = dataset[k]
        else:  # this process has run out of records: a fully masked copy keeps lock-step
            batch = dict(dataset[len(dataset) - 1])
            batch["mask"] = np.zeros(local, np.float32)
        out = predict(variables, pipeline.device_batch(batch, sharding))
        out = {"landmarks": out["landmarks"], "pose": out["pose"]}
        host = {"gt_landmarks": np.asarray(batch["landmarks"]),
                "gt_pose": np.asarray(batch["pose"]), "mask": np.asarray(batch["mask"]),
                # int32 travels between processes without 64-bit JAX
                "index": np.asarray(batch["index"]).astype(np.int32)}
        if process_count > 1:
            out = multihost_utils.process_allgather(out, tiled=True)
            host["name"] = _encode_names(batch["name"])
            host = multihost_utils.process_allgather(host, tiled=True)
            batch_names = _decode_names(host.pop("name"))
        else:
            out = jax.device_get(out)
            batch_names = [str(name) for name in batch["name"]]
        for key in keys:
            parts[key].append(np.asarray(out[key] if key in out else host[key]))
        names.extend(batch_names)
    arrays = {key: np.concatenate(value) for key, value in parts.items()}
    keep = np.flatnonzero(arrays.pop("mask") > 0)
    # Processes interleave records: restore the source order.
    keep = keep[np.argsort(arrays["index"][keep], kind="stable")]
    return FacePredictions(
        landmarks=arrays["landmarks"][keep], gt_landmarks=arrays["gt_landmarks"][keep],
        pose=arrays["pose"][keep], gt_pose=arrays["gt_pose"][keep],
        indices=arrays["index"][keep].astype(np.int64), names=[names[i] for i in keep])


def validation_metrics(predict, variables, source, pcfg: pipeline.PipelineConfig,
                       num_landmarks: int, mesh, process_index: int = 0,
                       process_count: int = 1) -> Dict:
    """Training's validation: :func:`predict_faces` over ``source``, summarised by
    :func:`asmnet_jax.metrics.summarize` (inter-ocular NME in %, pose MAE in degrees)."""
    faces = predict_faces(predict, variables, source, pcfg, mesh, process_index, process_count)
    return _summary(faces.landmarks, faces.gt_landmarks, faces.pose_deg, faces.gt_pose_deg,
                    num_landmarks)


def _summary(landmarks, gt_landmarks, pose_deg, gt_pose_deg, num_landmarks: int) -> Dict:
    """Validation's figures: inter-ocular NME (%), FR, AUC and pose MAE (degrees)."""
    nme = metrics.per_face_nme(landmarks, gt_landmarks, "inter_ocular", num_landmarks)
    return metrics.summarize(nme, pose_pred=pose_deg, pose_gt=gt_pose_deg)


def resident_validation_metrics(predict, variables, data, gt_landmarks: np.ndarray,
                                gt_pose_deg: np.ndarray, num_landmarks: int) -> Dict:
    """Training's validation on a resident set (``config.input="device"``): one call of
    ``predict`` (:func:`asmnet_jax.steps.compile_resident_eval`) over ``data``
    (:func:`asmnet_jax.data.resident.place`), then the summary of :func:`validation_metrics`.

    ``gt_landmarks`` (N, 2n) model units and ``gt_pose_deg`` (N, 3) are the labels of the base
    crops in record order; the placed set may hold a few repeated records after them (shard
    padding), which are dropped.
    """
    out = predict(variables, data)
    if jax.process_count() > 1:
        out = multihost_utils.process_allgather(out, tiled=True)
    else:
        out = jax.device_get(out)
    count = len(gt_landmarks)
    return _summary(np.asarray(out["landmarks"])[:count],
                    gt_landmarks, lm.model_pose_to_degrees(np.asarray(out["pose"])[:count]),
                    gt_pose_deg, num_landmarks)
