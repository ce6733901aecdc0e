"""The ASM-assisted loss of ASMNet (docs/method.md section 3), as pure jnp functions.

Shapes: landmarks (B, 2n) and pose (B, 3) in the model's units (:mod:`asmnet_jax.landmarks`).

    L_mse    = mean((G - P)^2)                  over the batch and the 2n coordinates
    L_asm    = mean((ASM(G) - P)^2)             ASM(G): ShapeModel.project, no gradient
    L_facial = L_mse + alpha(epoch) * L_asm     alpha = 2, 1, 0.5 by thirds of the epochs
    L_pose   = mean((pose_gt - pose_pred)^2)    over the batch and the three angles
    L        = 1.0 * L_facial + 0.5 * L_pose + head_l2

``landmark_loss="l1"`` replaces the squared error of both landmark terms by the absolute error
(``mean(|G - P|)`` and ``mean(|ASM(G) - P|)``), a robust loss beyond the paper: squared errors let
the few faces with large errors dominate the gradient late in training, while L1 keeps pulling
the many nearly-right points closer (the rest of the loss is unchanged).

``landmark_loss="wing"`` uses the Wing loss of Feng et al. (CVPR 2018) on each coordinate's error
``x``: ``w ln(1 + |x| / eps)`` below ``w``, ``|x| - C`` above, ``C = w - w ln(1 + w / eps)``
(continuous at ``w``); small and medium errors get a larger gradient than under L1, large ones the
same. ``(w, eps)`` are in the model's units (fractions of the crop side): the default
:data:`WING` is the paper's (10, 2) pixels at a 128-pixel input.

``head_l2`` is the authors' Keras penalty on both heads: ``weight * sum(w^2)`` over kernel and
bias (no 1/2), 0.01 in the authors' ASMNet, off in mnv2.

Distillation (``config.distill_teacher``, beyond the paper) adds a term for a teacher's
predictions ``(T, T_pose)`` on the same augmented images (:func:`distillation_loss`):

    L_distill = d(T, P) + 0.5 * mean((T_pose - pose_pred)^2)    d: the landmark loss's distance
    L         = (the loss above) + distill_weight * L_distill
"""

from __future__ import annotations

from typing import Mapping, Optional

import jax
import jax.numpy as jnp

from asmnet_jax.asm import ShapeModel

ALPHAS = (2.0, 1.0, 0.5)
FACIAL_WEIGHT = 1.0
POSE_WEIGHT = 0.5
HEAD_L2_WEIGHT = 0.01
#: Distances of the landmark terms: the paper's squared error, the absolute error, Wing.
LANDMARK_LOSSES = ("l2", "l1", "wing")
#: The Wing loss's (width w, curvature eps) in model units: the paper's (10, 2) px at 128 px.
WING = (10.0 / 128.0, 2.0 / 128.0)


def landmark_mse(predicted, target):
    """mean((target - predicted)^2) over (B, 2n)."""
    return jnp.mean(jnp.square(target.astype(jnp.float32) - predicted.astype(jnp.float32)))


def landmark_l1(predicted, target):
    """mean(|target - predicted|) over (B, 2n)."""
    return jnp.mean(jnp.abs(target.astype(jnp.float32) - predicted.astype(jnp.float32)))


def landmark_wing(predicted, target, width: float = WING[0], epsilon: float = WING[1]):
    """The mean Wing loss over (B, 2n) (see the module docstring)."""
    error = jnp.abs(target.astype(jnp.float32) - predicted.astype(jnp.float32))
    width, epsilon = float(width), float(epsilon)
    offset = width - width * jnp.log1p(width / epsilon)
    return jnp.mean(jnp.where(error < width, width * jnp.log1p(error / epsilon), error - offset))


def landmark_distance(kind: str, wing=WING):
    """The landmark term's distance function for ``kind`` in :data:`LANDMARK_LOSSES`; ``wing``:
    the Wing loss's (width, epsilon)."""
    if kind not in LANDMARK_LOSSES:
        raise ValueError(f"landmark loss must be one of {LANDMARK_LOSSES}, got {kind!r}")
    if kind == "wing":
        return lambda predicted, target: landmark_wing(predicted, target, *wing)
    return landmark_mse if kind == "l2" else landmark_l1


def pose_mse(predicted, target):
    """mean((target - predicted)^2) over (B, 3)."""
    return jnp.mean(jnp.square(target.astype(jnp.float32) - predicted.astype(jnp.float32)))


def asm_loss(predicted, target, shape_model: ShapeModel, landmark_loss: str = "l2", wing=WING):
    """mean((ASM(target) - predicted)^2) (or the landmark loss ``landmark_loss``): the distance
    to the ASM-smoothed ground truth."""
    smoothed = shape_model.project(target.astype(jnp.float32))
    return landmark_distance(landmark_loss, wing)(predicted, smoothed)


def distillation_loss(landmarks, pose, teacher_landmarks, teacher_pose,
                      landmark_loss: str = "l2", wing=WING, pose_weight: float = POSE_WEIGHT):
    """The distance of the student's predictions to a teacher's on the same images:
    ``d(teacher_landmarks, landmarks) + pose_weight * mean((teacher_pose - pose)^2)``, with ``d``
    the landmark distance of ``landmark_loss`` (:func:`landmark_distance`). The teacher's
    predictions are targets: no gradient flows into them.

    Args:
      landmarks, teacher_landmarks: (B, 2n) in model units. pose, teacher_pose: (B, 3).
    """
    teacher_landmarks = jax.lax.stop_gradient(teacher_landmarks)
    teacher_pose = jax.lax.stop_gradient(teacher_pose)
    return (landmark_distance(landmark_loss, wing)(landmarks, teacher_landmarks)
            + pose_weight * pose_mse(pose, teacher_pose))


def asm_alpha(epoch, total_epochs):
    """Weight of L_asm: 2 while epoch < E/3, 1 while epoch < 2E/3, then 0.5.

    ``epoch`` may be a traced value (0-based, integer or fractional), so a jitted step that takes
    it as an argument never recompiles when alpha changes. Compared as ``3 * epoch < E`` so that
    the boundaries are exact for integer epochs.
    """
    epoch = jnp.asarray(epoch, jnp.float32)
    total = jnp.asarray(total_epochs, jnp.float32)
    return jnp.where(3 * epoch < total, ALPHAS[0],
                     jnp.where(3 * epoch < 2 * total, ALPHAS[1], ALPHAS[2])).astype(jnp.float32)


def head_l2(params: Mapping, weight: float = HEAD_L2_WEIGHT,
            heads=("landmark_head", "pose_head")):
    """``weight * sum(w^2)`` over kernel and bias of the named heads (Keras l2 regulariser)."""
    leaves = jax.tree_util.tree_leaves([params[name] for name in heads])
    return weight * sum(jnp.sum(jnp.square(leaf.astype(jnp.float32))) for leaf in leaves)


def total_loss(landmarks_pred, pose_pred, landmarks_gt, pose_gt, *,
               shape_model: Optional[ShapeModel] = None, alpha=0.0,
               params: Optional[Mapping] = None, head_l2_weight: float = 0.0,
               facial_weight: float = FACIAL_WEIGHT, pose_weight: float = POSE_WEIGHT,
               landmark_loss: str = "l2", wing=WING, teacher=None, distill_weight: float = 1.0):
    """The whole loss and every term, for logging.

    Args:
      landmarks_pred, landmarks_gt: (B, 2n). pose_pred, pose_gt: (B, 3).
      shape_model: the ASM; None for the plain-MSE variants (ASMNet_nr, mnv2), where L_asm is 0.
      alpha: weight of L_asm (see :func:`asm_alpha`); may be traced.
      params: model params, needed when ``head_l2_weight > 0``.
      landmark_loss: ``"l2"`` (the paper), ``"l1"`` or ``"wing"`` for both landmark terms;
        ``wing``: the Wing loss's (width, epsilon).
      teacher: None, or a teacher's ``(landmarks (B, 2n), pose (B, 3))`` on the same images:
        ``distill_weight * ``:func:`distillation_loss` is added to the total (same landmark
        distance and pose weight as the label terms).

    Returns:
      (total, terms) with terms ``mse``, ``asm``, ``alpha``, ``facial``, ``pose``, ``head_l2``,
      ``total``, all float32 scalars (``mse`` is the landmark term, the mean absolute error
      under ``landmark_loss="l1"``), and ``distill`` (unweighted) with a teacher.
    """
    mse = landmark_distance(landmark_loss, wing)(landmarks_pred, landmarks_gt)
    zero = jnp.zeros((), jnp.float32)
    if shape_model is None:
        asm, alpha = zero, zero
    else:
        asm = asm_loss(landmarks_pred, landmarks_gt, shape_model, landmark_loss, wing)
        alpha = jnp.asarray(alpha, jnp.float32)
    facial = mse + alpha * asm
    pose = pose_mse(pose_pred, pose_gt)
    if head_l2_weight:
        if params is None:
            raise ValueError("head_l2_weight > 0 needs the model params")
        penalty = head_l2(params, head_l2_weight)
    else:
        penalty = zero
    total = facial_weight * facial + pose_weight * pose + penalty
    terms = {"mse": mse, "asm": asm, "alpha": alpha, "facial": facial, "pose": pose,
             "head_l2": penalty}
    if teacher is not None:
        distill = distillation_loss(landmarks_pred, pose_pred, *teacher, landmark_loss, wing,
                                    pose_weight)
        total = total + distill_weight * distill
        terms["distill"] = distill
    terms["total"] = total
    return total, terms
