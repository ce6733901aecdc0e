"""The Active Shape Model: a PCA eigenbasis of training shapes, applied on the device.

A shape is a landmark vector (2n,) in the model's coordinate convention
(:mod:`asmnet_jax.landmarks`). ``ShapeModel.fit`` computes the mean ``mu`` (2n,), the principal
axes ``V`` (2n, k) and their eigenvalues ``lambda`` (k,) (variance with the n - 1 denominator),
keeping the smallest k whose cumulative explained-variance ratio exceeds ``variance`` (the rule of
scikit-learn's ``PCA(n_components=variance)``). No Procrustes alignment is applied, as in the paper.

``ShapeModel.project(S)`` returns ``mu + V clip(V^T (S - mu), -3 sqrt(lambda), 3 sqrt(lambda))``
for a batch of shapes, in jnp, with the gradient stopped: the ASM target is a fixed function of the
ground truth.

``ShapeModel.plausibility(S)`` says how face-like a (predicted) shape is. With
``b = V^T (S - mu)`` and ``r = S - mu - V b`` (the part off the model's subspace):

* ``mahalanobis = sqrt(sum_i b_i^2 / lambda_i)``: the distance within the subspace, in standard
  deviations of the training shapes;
* ``residual = sqrt(||r||^2 / n) / d``: the RMS point distance off the subspace (n points), over
  the normaliser ``d`` of the mean shape: its inter-ocular distance (outer eye corners,
  :data:`asmnet_jax.landmarks.INTER_OCULAR`) for the 68- and 98-point markups, the RMS distance of
  its points from their centroid for any other; so for 68 / 98 points ``residual`` reads like an
  NME (0.05: the shape is 5 % of the inter-ocular distance off every face shape the model spans);
* ``score = exp(-ln 2 * ((mahalanobis / M)^2 + (residual / R)^2))`` in (0, 1]: 1 for the mean
  shape, falling with both distances.

``M`` and ``R`` (``mahalanobis_scale``, ``residual_scale``) are calibrated by :meth:`fit` on the
training shapes themselves: ``M0`` and ``R0`` are the 95th percentiles of the training shapes'
``mahalanobis`` and ``residual``, ``c`` the 95th percentile of
``sqrt((mahalanobis / M0)^2 + (residual / R0)^2)`` over them, and ``M = c M0``, ``R = c R0``; so
95 % of the training shapes score at least 0.5 and the 95th percentile scores exactly 0.5 (R0 is
floored at :data:`MIN_RESIDUAL_SCALE` for a model that keeps all of the variance). A shape model
file written before the calibration existed loads without it: ``residual`` and ``mahalanobis``
are still given, ``score`` is not (:meth:`calibrate` adds it from the training shapes).
"""

from __future__ import annotations

import dataclasses
import os
from typing import Dict, Optional

import jax
import jax.numpy as jnp
import numpy as np

from asmnet_jax.files import atomic_open

CLAMP_STDS = 3.0
#: The training shapes' quantile that scores 0.5 in :meth:`ShapeModel.plausibility`.
SCORE_QUANTILE = 0.95
#: Floor of the residual scale (in normaliser units): a model that keeps all the variance has no
#: residual on its training shapes.
MIN_RESIDUAL_SCALE = 1e-3
#: Floor of the eigenvalues in the Mahalanobis distance (a degenerate mode of zero variance).
_MIN_EIGENVALUE = 1e-12
CALIBRATION_FIELDS = ("residual_scale", "mahalanobis_scale")


def shape_normaliser(mean) -> float:
    """``d`` of :meth:`ShapeModel.plausibility` for the mean shape ``mean`` (2n,): its
    inter-ocular distance for 68 / 98 points, else the RMS distance of its points from their
    centroid (1.0 if that is 0)."""
    from asmnet_jax.landmarks import INTER_OCULAR

    points = np.asarray(mean, np.float64).reshape(-1, 2)
    if len(points) in INTER_OCULAR:
        left, right = INTER_OCULAR[len(points)]
        distance = float(np.linalg.norm(points[left] - points[right]))
    else:
        distance = float(np.sqrt(np.mean(np.sum((points - points.mean(0)) ** 2, axis=1))))
    return distance if distance > 0 else 1.0


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class ShapeModel:
    """PCA shape model. ``mean`` (2n,), ``components`` (2n, k), ``eigenvalues`` (k,).

    A pytree (its arrays are leaves), so it can be passed into jitted functions as an argument.
    """

    mean: jax.Array
    components: jax.Array
    eigenvalues: jax.Array
    #: Plausibility calibration (scalars; None in a model file written before it existed).
    residual_scale: Optional[jax.Array] = None
    mahalanobis_scale: Optional[jax.Array] = None

    @property
    def num_components(self) -> int:
        return int(self.eigenvalues.shape[0])

    @property
    def dim(self) -> int:
        return int(self.mean.shape[0])

    @classmethod
    def fit(cls, shapes, variance: float = 0.90) -> "ShapeModel":
        """Fits the model to ``shapes`` (N, 2n) keeping ``variance`` (0 < variance < 1) of it."""
        shapes = np.asarray(shapes, dtype=np.float64)
        if shapes.ndim != 2:
            raise ValueError(f"shapes must be (N, 2n), got shape {shapes.shape}")
        if not np.all(np.isfinite(shapes)):
            raise ValueError("shapes contain NaN or infinite values")
        if not 0.0 < variance < 1.0:
            raise ValueError(f"variance must be in (0, 1), got {variance}")
        count = shapes.shape[0]
        if count < 2:
            raise ValueError(f"need at least 2 shapes to fit a shape model, got {count}")
        mean = shapes.mean(axis=0)
        centred = shapes - mean
        # Right singular vectors are the principal axes; s^2 / (N - 1) are the eigenvalues.
        _, singular, axes_t = np.linalg.svd(centred, full_matrices=False)
        eigenvalues = singular ** 2 / (count - 1)
        ratio = eigenvalues / eigenvalues.sum()
        k = int(np.searchsorted(np.cumsum(ratio), variance, side="right")) + 1
        k = min(k, len(eigenvalues))
        axes = axes_t[:k].T
        # Deterministic orientation: the largest-magnitude entry of each axis is positive.
        signs = np.sign(axes[np.argmax(np.abs(axes), axis=0), np.arange(k)])
        axes = axes * signs
        model = cls(mean=jnp.asarray(mean, jnp.float32),
                    components=jnp.asarray(axes, jnp.float32),
                    eigenvalues=jnp.asarray(eigenvalues[:k], jnp.float32))
        return model.calibrate(shapes)

    @property
    def calibrated(self) -> bool:
        """Whether :meth:`plausibility` gives a ``score`` (the model has its calibration)."""
        return self.residual_scale is not None and self.mahalanobis_scale is not None

    def calibrate(self, shapes) -> "ShapeModel":
        """This model with ``residual_scale`` and ``mahalanobis_scale`` calibrated on
        ``shapes`` (N, 2n), the training shapes (see the module docstring)."""
        shapes = np.asarray(shapes, np.float64)
        if shapes.ndim != 2 or shapes.shape[1] != self.dim or len(shapes) < 1:
            raise ValueError(f"shapes must be (N, {self.dim}) with N >= 1, got {shapes.shape}")
        distances = self.plausibility(shapes)
        residual = np.asarray(distances["residual"], np.float64)
        mahalanobis = np.asarray(distances["mahalanobis"], np.float64)
        r0 = max(float(np.quantile(residual, SCORE_QUANTILE)), MIN_RESIDUAL_SCALE)
        m0 = float(np.quantile(mahalanobis, SCORE_QUANTILE))
        m0 = m0 if m0 > 0 else 1.0
        c = float(np.quantile(np.sqrt((mahalanobis / m0) ** 2 + (residual / r0) ** 2),
                              SCORE_QUANTILE))
        c = c if c > 0 else 1.0
        return dataclasses.replace(self, residual_scale=jnp.asarray(c * r0, jnp.float32),
                                   mahalanobis_scale=jnp.asarray(c * m0, jnp.float32))

    def plausibility(self, shapes) -> Dict[str, jax.Array]:
        """How face-like ``shapes`` (..., 2n) (model units) are, each.

        Returns ``{'residual': (...), 'mahalanobis': (...), 'score': (...)}`` (jnp float32; see
        the module docstring); ``score`` only when the model is :attr:`calibrated`.
        """
        shapes = jnp.asarray(shapes, jnp.float32)
        if shapes.shape[-1] != self.dim:
            raise ValueError(f"shapes must be (..., {self.dim}), got {shapes.shape}")
        centred = shapes - self.mean
        coefficients = centred @ self.components
        off = centred - coefficients @ self.components.T
        points = self.dim // 2
        residual = jnp.sqrt(jnp.sum(off ** 2, axis=-1) / points) / shape_normaliser(self.mean)
        mahalanobis = jnp.sqrt(jnp.sum(
            coefficients ** 2 / jnp.maximum(self.eigenvalues, _MIN_EIGENVALUE), axis=-1))
        out = {"residual": residual, "mahalanobis": mahalanobis}
        if self.calibrated:
            z = (mahalanobis / self.mahalanobis_scale) ** 2 + (residual / self.residual_scale) ** 2
            out["score"] = jnp.exp(-jnp.log(2.0) * z)
        return out

    def project(self, shapes):
        """ASM(S) for shapes (..., 2n) -> (..., 2n), coefficients clamped to 3 sqrt(lambda)."""
        shapes = jax.lax.stop_gradient(jnp.asarray(shapes))
        mean = self.mean.astype(shapes.dtype)
        components = self.components.astype(shapes.dtype)
        limit = CLAMP_STDS * jnp.sqrt(self.eigenvalues).astype(shapes.dtype)
        coefficients = (shapes - mean) @ components
        coefficients = jnp.clip(coefficients, -limit, limit)
        return mean + coefficients @ components.T

    def save(self, path) -> None:
        """Writes the model to ``path`` (.npz)."""
        path = os.fspath(path)
        with atomic_open(path, "wb") as f:
            arrays = {"mean": np.asarray(self.mean), "components": np.asarray(self.components),
                      "eigenvalues": np.asarray(self.eigenvalues)}
            if self.calibrated:
                arrays.update({key: np.asarray(getattr(self, key), np.float32)
                               for key in CALIBRATION_FIELDS})
            np.savez(f, **arrays)

    @classmethod
    def load(cls, path) -> "ShapeModel":
        """Reads a model written by :meth:`save`; raises ValueError naming the file if invalid.

        A file without the plausibility calibration (written before it existed) loads
        uncalibrated (:attr:`calibrated` False)."""
        path = os.fspath(path)
        try:
            with np.load(path) as data:
                arrays = {key: np.asarray(data[key], np.float32)
                          for key in ("mean", "components", "eigenvalues")}
                scales = {key: np.asarray(data[key], np.float32)
                          for key in CALIBRATION_FIELDS if key in data.files}
        except (OSError, ValueError, KeyError) as err:
            raise ValueError(f"{path}: not a shape model file ({err})") from err
        dim, k = arrays["components"].shape if arrays["components"].ndim == 2 else (-1, -1)
        if arrays["mean"].shape != (dim,) or arrays["eigenvalues"].shape != (k,):
            raise ValueError(
                f"{path}: inconsistent shapes mean {arrays['mean'].shape}, components "
                f"{arrays['components'].shape}, eigenvalues {arrays['eigenvalues'].shape}")
        if scales and (set(scales) != set(CALIBRATION_FIELDS)
                       or any(v.shape != () or not np.isfinite(v) or v <= 0
                              for v in scales.values())):
            found = {key: value.tolist() for key, value in scales.items()}
            raise ValueError(f"{path}: bad plausibility calibration {found}; expected positive "
                             f"scalars {', '.join(CALIBRATION_FIELDS)}")
        arrays.update(scales)
        return cls(**{key: jnp.asarray(value) for key, value in arrays.items()})
