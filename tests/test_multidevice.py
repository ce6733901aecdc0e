"""The data-parallel step on several (fake CPU) devices equals the one-device step.

Runs in a subprocess with 4 host devices (XLA_FLAGS) and 64-bit JAX: in float64 the only
difference between 1 and 4 devices is the order of summation, so parameters and BN statistics must
agree to 1e-5 (with room to spare); a wrong reduction (a sum for a mean, per-device BN statistics)
would differ by orders of magnitude more. In float32 the same comparison is dominated by rounding
amplified through 16 freshly initialised blocks.
"""

import json
import os
import subprocess
import sys
import textwrap

import pytest

from conftest import with_fast_compile

SCRIPT = textwrap.dedent("""
    import json
    import jax, jax.numpy as jnp, numpy as np, optax
    from _batches import random_batch_and_shape_model
    from asmnet_jax.models import ASMNet
    from asmnet_jax import mesh as mesh_lib, steps

    assert jax.device_count() == 4 and jax.config.jax_enable_x64
    rng = np.random.default_rng(0)
    B, S = 8, 32
    batch, shape_model = random_batch_and_shape_model(rng, B, S)
    model = ASMNet(num_landmarks=68, dropout_rate=0.0, bn_axis_name="data", dtype=jnp.float64)
    optimizer = optax.sgd(0.05)
    settings = steps.LossSettings(total_epochs=3, steps_per_epoch=10, head_l2_weight=0.01)
    results = []
    for n in (1, 4):
        mesh = mesh_lib.make_mesh(jax.devices()[:n])
        state = steps.create_train_state(model, optimizer, jax.random.key(0), S)
        state = mesh_lib.replicate(state, mesh)
        step = steps.compile_train_step(model, optimizer, settings, mesh)
        device_batch = {k: jax.device_put(v, mesh_lib.batch_sharding(mesh)) for k, v in batch.items()}
        state, metrics = step(state, device_batch, mesh_lib.replicate(shape_model, mesh),
                              None)
        results.append((jax.device_get(state), float(metrics["total"])))

    def max_diff(a, b):
        return max(float(np.max(np.abs(np.asarray(x, np.float64) - np.asarray(y, np.float64))))
                   for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)))

    (one, loss1), (four, loss4) = results
    print(json.dumps({"params": max_diff(one.params, four.params),
                      "batch_stats": max_diff(one.batch_stats, four.batch_stats),
                      "moved": max_diff(one.params, steps.create_train_state(
                          model, optimizer, jax.random.key(0), S).params),
                      "loss_1": loss1, "loss_4": loss4}))
""")


@pytest.mark.slow
def test_one_step_on_four_devices_equals_one_step_on_one(tmp_path):
    """Slow tier: test_distributed.py checks four devices (two per process) against one in the
    default tier, through the whole training loop; this is the same check on a single step in
    one process, for narrowing down a failure there."""
    tests = os.path.dirname(os.path.abspath(__file__))
    env = dict(os.environ, XLA_FLAGS=with_fast_compile("--xla_force_host_platform_device_count=4"),
               PYTHONPATH=os.pathsep.join(filter(None, [tests, os.environ.get("PYTHONPATH")])),
               JAX_ENABLE_X64="1", JAX_PLATFORMS="cpu")
    done = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True,
                          env=env, timeout=900, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["moved"] > 1e-3          # the step did change the parameters
    assert result["params"] <= 1e-5
    assert result["batch_stats"] <= 1e-5
    assert abs(result["loss_1"] - result["loss_4"]) <= 1e-6 * abs(result["loss_1"])
