"""The weight average (config.ema_decay): its update rule, that it leaves training untouched, and
that a run evaluates and ships the average."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from asmnet_jax import config_base
from asmnet_jax.models import build_model
from asmnet_jax import mesh as mesh_lib
from asmnet_jax import inference, steps, train

from _batches import random_batch_and_shape_model
from conftest import tiny_config
from test_train import _params


def test_ema_update_follows_closely_at_first_then_at_the_set_decay():
    ema, x = {"w": jnp.zeros(3)}, {"w": jnp.ones(3)}
    # Step 0: min(0.99, 1/10) = 0.1 kept, 0.9 moved.
    np.testing.assert_allclose(steps.ema_update(ema, x, 0, 0.99)["w"], 0.9, rtol=1e-6)
    # Late: the set decay.
    np.testing.assert_allclose(steps.ema_update(ema, x, 10_000, 0.99)["w"], 0.01, rtol=1e-5)
    np.testing.assert_allclose(steps.ema_update(ema, x, 3, 0.2)["w"], 0.8, rtol=1e-6)


def test_the_train_step_averages_params_and_statistics_and_trains_as_without(tiny_host_run):
    # The session's tiny host-path run's model, optimizer, loss settings and shape model: the
    # averaging step is that run's compiled program, so nothing compiles here.
    from asmnet_jax.asm import ShapeModel

    config = tiny_config()
    rng = np.random.default_rng(0)
    B, S = config.batch_size, config.input_size
    batch, _ = random_batch_and_shape_model(rng, B, S)
    shape_model = ShapeModel.load(f"{tiny_host_run[0]}/asm.npz")
    model = build_model(config, bn_axis_name=mesh_lib.DATA_AXIS)
    _, optimizer = train.schedule_and_optimizer(config.optimizer, 4, 12)
    decay = config.ema_decay
    averaging = steps.LossSettings(total_epochs=config.num_epochs, steps_per_epoch=4,
                                   head_l2_weight=config.head_l2,
                                   landmark_loss=config.landmark_loss, ema_decay=decay)
    mesh = mesh_lib.make_mesh(jax.devices()[:1])
    batch = {k: jax.device_put(v, mesh_lib.batch_sharding(mesh)) for k, v in batch.items()}
    shape_model = mesh_lib.replicate(shape_model, mesh)

    step = steps.compile_train_step(model, optimizer, averaging, mesh)
    state = mesh_lib.replicate(steps.with_ema(
        steps.create_train_state(model, optimizer, jax.random.key(0), S)), mesh)
    averaged = [jax.device_get(state)]
    for _ in range(2):
        state, _ = step(state, batch, shape_model, None)
        averaged.append(jax.device_get(state))

    def weights(state):
        return {"params": state.params, "batch_stats": state.batch_stats}

    # The average does not feed back into training: from the same weights with another average
    # (here: the weights plus one), the step trains to exactly the same weights.
    for before, after in zip(averaged, averaged[1:]):
        other = jax.tree_util.tree_map(lambda x: x + 1, before.ema)
        redone, _ = step(mesh_lib.replicate(before.replace(ema=other), mesh), batch, shape_model,
                         None)
        for x, y in zip(jax.tree_util.tree_leaves(weights(jax.device_get(redone))),
                        jax.tree_util.tree_leaves(weights(after))):
            np.testing.assert_array_equal(x, y)
    expected = weights(averaged[0])
    for i in (0, 1):
        kept = min(decay, (1 + i) / (10 + i))
        expected = jax.tree_util.tree_map(lambda e, x: e + (1 - kept) * (x - e), expected,
                                          weights(averaged[i + 1]))
        got = averaged[i + 1].ema
        for x, y in zip(jax.tree_util.tree_leaves(expected), jax.tree_util.tree_leaves(got)):
            np.testing.assert_allclose(y, x, rtol=1e-5, atol=1e-7)
    moved = max(float(np.max(np.abs(x - y))) for x, y in zip(
        jax.tree_util.tree_leaves(averaged[2].ema["params"]),
        jax.tree_util.tree_leaves(averaged[2].params)))
    assert moved > 1e-6  # average and weights differ after two steps


def test_a_run_with_ema_evaluates_and_ships_the_average(tiny_run):
    workdir, summary = tiny_run  # trained with ema_decay 0.9
    _, state = _params(workdir)
    assert state["ema"] is not None
    loaded = inference.load(workdir, which="latest")
    ema_leaves = jax.tree_util.tree_leaves(state["ema"])
    for x, y in zip(jax.tree_util.tree_leaves(loaded.variables), ema_leaves):
        np.testing.assert_array_equal(x, np.asarray(y, np.float32))
    assert any(np.max(np.abs(np.asarray(x) - np.asarray(y))) > 0 for x, y in zip(
        jax.tree_util.tree_leaves(state["params"]),
        jax.tree_util.tree_leaves(state["ema"]["params"])))
    assert np.isfinite(summary["val_nme"])


def test_ema_decay_out_of_range_is_refused():
    with pytest.raises(config_base.ConfigError, match=r"config.ema_decay: 1.0 is not in \[0, 1\)"):
        config_base.check_config(tiny_config(ema_decay=1.0))
