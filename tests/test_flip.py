"""Test-time flip averaging: the compiled eval step with ``flip`` computes exactly
``(P(x) + M(P(flip(x)))) / 2``, M mirroring x, reordering points by the markup's mirror order and
negating yaw and roll; checked against a direct NumPy computation for 68 and 98 points."""

import numpy as np
import pytest

import jax
import jax.numpy as jnp

from asmnet_jax import landmarks as lm
from asmnet_jax import steps as steps_lib
from asmnet_jax.models import create_model

SIZE = 64


@pytest.mark.parametrize("num_landmarks", [68, 98])
def test_flip_averaging_equals_the_direct_computation(num_landmarks):
    model = create_model("asmnet", num_landmarks, dropout_rate=0.0)
    variables = model.init(jax.random.key(num_landmarks), jnp.zeros((1, SIZE, SIZE, 3)))
    # Heads with large outputs, so that a wrong permutation or sign cannot hide in rounding.
    params = jax.tree_util.tree_map(lambda x: x, variables["params"])
    rng = np.random.default_rng(0)
    params["landmark_head"]["kernel"] = jnp.asarray(
        rng.normal(0, 0.5, params["landmark_head"]["kernel"].shape), jnp.float32)
    params["pose_head"]["kernel"] = jnp.asarray(
        rng.normal(0, 0.5, params["pose_head"]["kernel"].shape), jnp.float32)
    variables = {"params": params, "batch_stats": variables["batch_stats"]}
    images = rng.integers(0, 256, (4, SIZE, SIZE, 3), dtype=np.uint8)

    mesh = steps_lib.make_mesh(jax.local_devices()[:1])
    batch = {"image": jax.device_put(images, steps_lib.batch_sharding(mesh))}
    replicated = steps_lib.replicate(variables, mesh)
    flipped = steps_lib.compile_eval_step(model, mesh, flip=True)(replicated, batch)
    plain = steps_lib.compile_eval_step(model, mesh)(replicated, batch)

    unit = images.astype(np.float32) / 255
    apply = jax.jit(lambda v, x: model.apply(v, x, train=False))  # one compile, not op by op
    p_landmarks, p_pose = (np.asarray(a) for a in apply(variables, unit))
    m_landmarks, m_pose = (np.asarray(a) for a in apply(variables, unit[:, :, ::-1].copy()))
    # M: mirror the x coordinates and reorder the points by the flip order (numpy reference).
    order = lm.FLIP_ORDERS[num_landmarks]
    points = m_landmarks.reshape(4, num_landmarks, 2).copy()
    points[..., 0] *= -1
    mirrored = points[:, order].reshape(4, -1)
    mirrored_pose = m_pose * np.array([-1, 1, -1])

    np.testing.assert_allclose(np.asarray(plain["landmarks"]), p_landmarks, atol=1e-5)
    np.testing.assert_allclose(np.asarray(flipped["landmarks"]), (p_landmarks + mirrored) / 2,
                               atol=1e-5)
    np.testing.assert_allclose(np.asarray(flipped["pose"]), (p_pose + mirrored_pose) / 2,
                               atol=1e-5)
    # The flip changes the result (the check above could fail).
    assert np.abs(np.asarray(flipped["landmarks"]) - p_landmarks).max() > 1e-3


def test_mirror_is_the_landmarks_module_flip_and_an_involution():
    rng = np.random.default_rng(1)
    for n in (68, 98):
        vector = rng.normal(size=(3, 2 * n)).astype(np.float32)
        pose = rng.normal(size=(3, 3)).astype(np.float32)
        mirrored, mirrored_pose = steps_lib.mirror_predictions(
            jnp.asarray(vector), jnp.asarray(pose), lm.FLIP_ORDERS[n])
        np.testing.assert_array_equal(np.asarray(mirrored), lm.flip_landmarks_model(vector, n))
        back, back_pose = steps_lib.mirror_predictions(mirrored, mirrored_pose,
                                                       lm.FLIP_ORDERS[n])
        np.testing.assert_array_equal(np.asarray(back), vector)
        np.testing.assert_array_equal(np.asarray(back_pose), pose)
