"""Test-time flip averaging: the compiled eval step with ``flip`` computes exactly
``(P(x) + M(P(flip(x)))) / 2``, M mirroring x, reordering points by the markup's mirror order and
negating yaw and roll; checked against a direct NumPy computation for 68 and 98 points."""

import numpy as np
import pytest

import jax
import jax.numpy as jnp

from asmnet_jax.models import build_model
from asmnet_jax import mesh as mesh_lib
from asmnet_jax import landmarks as lm
from asmnet_jax import steps as steps_lib
from asmnet_jax import train
from conftest import tiny_config


@pytest.mark.parametrize("num_landmarks", [68, 98])
def test_flip_averaging_equals_the_direct_computation(tiny_run, num_landmarks):
    # The session's tiny run's model, init program and (68 points) plain eval step. The 98-point
    # model differs only in its landmark head, which is replaced anyway.
    config = tiny_config(num_landmarks=num_landmarks)
    size, count = config.input_size, config.batch_size
    model = build_model(config, bn_axis_name=mesh_lib.DATA_AXIS)
    _, optimizer = train.schedule_and_optimizer(tiny_config().optimizer, 4, 12)
    init = steps_lib.create_train_state(build_model(tiny_config(),
                                                          bn_axis_name=mesh_lib.DATA_AXIS),
                                        optimizer, jax.random.key(0), size)
    # Heads with large outputs, so that a wrong permutation or sign cannot hide in rounding.
    params = jax.device_get(init.params)
    rng = np.random.default_rng(num_landmarks)
    features = params["landmark_head"]["kernel"].shape[0]
    params["landmark_head"] = {
        "kernel": rng.normal(0, 0.5, (features, 2 * num_landmarks)).astype(np.float32),
        "bias": np.zeros(2 * num_landmarks, np.float32)}
    params["pose_head"]["kernel"] = rng.normal(
        0, 0.5, params["pose_head"]["kernel"].shape).astype(np.float32)
    variables = {"params": params, "batch_stats": jax.device_get(init.batch_stats)}
    images = rng.integers(0, 256, (count, size, size, 3), dtype=np.uint8)

    mesh = mesh_lib.make_mesh(jax.local_devices()[:1])
    batch = {"image": jax.device_put(images, mesh_lib.batch_sharding(mesh))}
    replicated = mesh_lib.replicate(variables, mesh)
    flipped = steps_lib.compile_eval_step(model, mesh, flip=True)(replicated, batch)

    unit = images.astype(np.float32) / 255
    apply = jax.jit(lambda v, x: model.apply(v, x, train=False))  # one compile, not op by op
    p_landmarks, p_pose = (np.asarray(a) for a in apply(variables, unit))
    m_landmarks, m_pose = (np.asarray(a) for a in apply(variables, unit[:, :, ::-1].copy()))
    # M: mirror the x coordinates and reorder the points by the flip order (numpy reference).
    order = lm.FLIP_ORDERS[num_landmarks]
    points = m_landmarks.reshape(count, num_landmarks, 2).copy()
    points[..., 0] *= -1
    mirrored = points[:, order].reshape(count, -1)
    mirrored_pose = m_pose * np.array([-1, 1, -1])

    if num_landmarks == 68:  # the plain step is the reference's function (compiled already)
        plain = steps_lib.compile_eval_step(model, mesh)(replicated, batch)
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
