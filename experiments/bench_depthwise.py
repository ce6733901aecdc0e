"""One ASMNet train step on this machine with each depthwise-convolution form, in the same run.

The step is forward + backward of the full ASM-assisted loss (L_mse + alpha L_asm + 0.5 L_pose +
head L2) with BN statistics updated and an Adam update applied, jitted, at batch 32 and 224 x 224
by default. It reports the median step time over a few steps after one warm-up (compilation) step.

    python -m experiments.bench_depthwise [--batch 32] [--size 224] [--steps 3]

The last output line is JSON: {"step_s_xla": ..., "step_s_shift": ..., "speedup": ..., ...}.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from asmnet_jax.asm import ShapeModel
from asmnet_jax.losses import HEAD_L2_WEIGHT, asm_alpha, total_loss
from asmnet_jax.models import ASMNet


def make_step(model, optimizer, shape_model, total_epochs=30):
    """A jitted train step: (params, batch_stats, opt_state, batch, epoch, key) -> new state, loss."""

    def step(params, batch_stats, opt_state, batch, epoch, key):
        def loss_fn(params):
            (landmarks, pose), updates = model.apply(
                {"params": params, "batch_stats": batch_stats}, batch["image"], train=True,
                rngs={"dropout": key}, mutable=["batch_stats"])
            loss, _ = total_loss(landmarks, pose, batch["landmarks"], batch["pose"],
                                 shape_model=shape_model, alpha=asm_alpha(epoch, total_epochs),
                                 params=params, head_l2_weight=HEAD_L2_WEIGHT)
            return loss, updates["batch_stats"]

        (loss, new_stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), new_stats, opt_state, loss

    return jax.jit(step, donate_argnums=(0, 1, 2))


def time_steps(impl, batch, size, steps, num_landmarks=68):
    model = ASMNet(num_landmarks=num_landmarks, depthwise_impl=impl)
    rng = np.random.default_rng(0)
    data = {
        "image": jnp.asarray(rng.uniform(size=(batch, size, size, 3)), jnp.float32),
        "landmarks": jnp.asarray(rng.uniform(-0.4, 0.4, (batch, 2 * num_landmarks)), jnp.float32),
        "pose": jnp.asarray(rng.uniform(-1, 1, (batch, 3)), jnp.float32),
    }
    shape_model = ShapeModel.fit(rng.uniform(-0.4, 0.4, (64, 2 * num_landmarks)), 0.9)
    variables = jax.jit(model.init)(jax.random.key(0), data["image"][:1])
    optimizer = optax.adam(1e-3)
    params, stats = variables["params"], variables["batch_stats"]
    opt_state = optimizer.init(params)
    step = make_step(model, optimizer, shape_model)
    times = []
    for i in range(steps + 1):
        start = time.perf_counter()
        params, stats, opt_state, loss = step(params, stats, opt_state, data, jnp.int32(0),
                                              jax.random.key(i))
        jax.block_until_ready((params, loss))
        times.append(time.perf_counter() - start)
    return {"compile_and_first_step_s": times[0], "step_s": statistics.median(times[1:]),
            "loss": float(loss)}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--impls", nargs="+", default=["xla", "shift"], choices=["xla", "shift"])
    args = parser.parse_args()

    result = {"batch": args.batch, "size": args.size, "steps": args.steps,
              "backend": jax.default_backend(), "device": str(jax.devices()[0]),
              "cpu_count": os.cpu_count(), "machine": platform.machine(),
              "jax": jax.__version__}
    for impl in args.impls:
        r = time_steps(impl, args.batch, args.size, args.steps)
        result[f"step_s_{impl}"] = r["step_s"]
        result[f"img_s_{impl}"] = args.batch / r["step_s"]
        result[f"first_step_s_{impl}"] = r["compile_and_first_step_s"]
        print(f"{impl:>6}: {r['step_s']:.3f} s/step ({args.batch / r['step_s']:.1f} img/s), "
              f"first step incl. compile {r['compile_and_first_step_s']:.1f} s", flush=True)
    if "step_s_xla" in result and "step_s_shift" in result:
        result["speedup"] = result["step_s_xla"] / result["step_s_shift"]
        print(f"speedup of the shift-add depthwise op: {result['speedup']:.2f}x")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
