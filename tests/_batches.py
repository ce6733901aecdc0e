"""A random training batch and shape model for the step-level tests (no data pipeline).

A plain module, not a fixture, so the scripts that tests run in subprocesses import it too (they
get ``tests/`` on ``PYTHONPATH``)."""

import numpy as np


def random_batch_and_shape_model(rng: np.random.Generator, batch: int, size: int,
                                  num_landmarks: int = 68):
    """(batch dict with image uint8, landmarks, pose and mask, a ShapeModel keeping 90 %)."""
    from asmnet_jax.asm import ShapeModel

    n = 2 * num_landmarks
    arrays = {"image": rng.integers(0, 256, (batch, size, size, 3)).astype(np.uint8),
              "landmarks": rng.uniform(-.4, .4, (batch, n)).astype(np.float32),
              "pose": rng.uniform(-1, 1, (batch, 3)).astype(np.float32),
              "mask": np.ones(batch, np.float32)}
    return arrays, ShapeModel.fit(rng.uniform(-.4, .4, (50, n)), 0.9)
