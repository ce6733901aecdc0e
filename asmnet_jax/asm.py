"""The Active Shape Model: a PCA eigenbasis of training shapes, applied on the device.

A shape is a landmark vector (2n,) in the model's coordinate convention
(:mod:`asmnet_jax.landmarks`). ``ShapeModel.fit`` computes the mean ``mu`` (2n,), the principal
axes ``V`` (2n, k) and their eigenvalues ``lambda`` (k,) (variance with the n - 1 denominator),
keeping the smallest k whose cumulative explained-variance ratio exceeds ``variance`` (the rule of
scikit-learn's ``PCA(n_components=variance)``). No Procrustes alignment is applied, as in the paper.

``ShapeModel.project(S)`` returns ``mu + V clip(V^T (S - mu), -3 sqrt(lambda), 3 sqrt(lambda))``
for a batch of shapes, in jnp, with the gradient stopped: the ASM target is a fixed function of the
ground truth.
"""

from __future__ import annotations

import dataclasses
import os

import jax
import jax.numpy as jnp
import numpy as np

from asmnet_jax.files import atomic_open

CLAMP_STDS = 3.0


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class ShapeModel:
    """PCA shape model. ``mean`` (2n,), ``components`` (2n, k), ``eigenvalues`` (k,).

    A pytree (its arrays are leaves), so it can be passed into jitted functions as an argument.
    """

    mean: jax.Array
    components: jax.Array
    eigenvalues: jax.Array

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
        return cls(mean=jnp.asarray(mean, jnp.float32),
                   components=jnp.asarray(axes, jnp.float32),
                   eigenvalues=jnp.asarray(eigenvalues[:k], jnp.float32))

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
            np.savez(f, mean=np.asarray(self.mean), components=np.asarray(self.components),
                     eigenvalues=np.asarray(self.eigenvalues))

    @classmethod
    def load(cls, path) -> "ShapeModel":
        """Reads a model written by :meth:`save`; raises ValueError naming the file if invalid."""
        path = os.fspath(path)
        try:
            with np.load(path) as data:
                arrays = {key: np.asarray(data[key], np.float32)
                          for key in ("mean", "components", "eigenvalues")}
        except (OSError, ValueError, KeyError) as err:
            raise ValueError(f"{path}: not a shape model file ({err})") from err
        dim, k = arrays["components"].shape if arrays["components"].ndim == 2 else (-1, -1)
        if arrays["mean"].shape != (dim,) or arrays["eigenvalues"].shape != (k,):
            raise ValueError(
                f"{path}: inconsistent shapes mean {arrays['mean'].shape}, components "
                f"{arrays['components'].shape}, eigenvalues {arrays['eigenvalues'].shape}")
        return cls(**{key: jnp.asarray(value) for key, value in arrays.items()})
