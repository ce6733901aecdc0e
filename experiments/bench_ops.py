"""Micro-benchmarks of ASMNet's layer types on this machine: the reference formulation against the
one the model uses, forward and forward + backward (VJP), interleaved in one process.

* ``pointwise``: 1x1 conv as ``lax.conv_general_dilated`` (what ``nn.Conv`` does) against one
  ``dot`` over (B * H * W, C) (:class:`asmnet_jax.models.PointwiseConv`);
* ``depthwise``: XLA's grouped convolution, the shift-add form differentiated by autodiff, and the
  shift-add form with its hand-written VJP (:func:`asmnet_jax.depthwise.depthwise_conv3x3_shift`);
* ``batchnorm``: ``flax.linen.BatchNorm`` against :class:`asmnet_jax.models.BatchNorm` (training
  mode: batch statistics, running averages, and the gradient through the statistics).

Shapes are those of ASMNet at 224 x 224 (block_1 and block_2, the largest activations). Each
variant is jitted, warmed up, then timed ``--reps`` times round-robin; the medians are reported.

    python -m experiments.bench_ops [--batch 8] [--reps 5] [--ops pointwise depthwise batchnorm]

The last output line is JSON: {"<op>/<shape>/<variant>/<fwd|vjp>_ms": ..., ...}.

Measured on the 2-core AMD EPYC CPU (jax 0.10.2, `--batch 8 --reps 5`), busy with a training run
and other tests (load 6-7), so only ratios within one run mean anything; medians in ms:

    op, shape                  reference fwd / vjp          project's form fwd / vjp
    pointwise 112x112 16->96   conv 25.6 / 163.0            dot 25.1 / 16.8
    pointwise 56x56 24->144    conv 3.4 / 30.0              dot 2.9 / 7.4
    pointwise 56x56 144->24    conv 5.9 / 19.2              dot 4.4 / 6.6
    pointwise 14x14 384->96    conv 2.1 / 8.4               dot 1.8 / 4.3
    depthwise 112x112x32 s1    autodiff 4.2 / 84.3          custom VJP 5.5 / 24.2  (xla 103 / 186)
    depthwise 112x112x96 s2    autodiff 31.0 / 94.3         custom VJP 37.7 / 78.8 (xla 105 / 1406)
    depthwise 56x56x144 s1     autodiff 6.3 / 90.6          custom VJP 11.0 / 20.9 (xla 123 / 568)
    depthwise 56x56x144 s2     autodiff 3.4 / 9.0           custom VJP 3.4 / 11.0  (xla 30 / 444)
    depthwise 14x14x384 s1     autodiff 1.3 / 4.8           custom VJP 1.0 / 3.9   (xla 19 / 104)
    BN train 112x112x96        flax 29.1 / 49.3             x * a + b 28.7 / 40.9
    BN train 56x56x144         flax 6.2 / 9.0               x * a + b 3.8 / 5.4

Whole model, ASMNet fwd+bwd at batch 8, 224 px, each pair interleaved in one process (medians of
4-6; the load changed between pairs): 1x1 convs as dots 9.32 -> 6.40 s; custom depthwise VJP
3.99 -> 2.90 s; BN as x * a + b 1.035 -> 0.912 s. The train step of ``bench_depthwise.py
--impls shift`` at batch 32 (separate processes, alternated): 11.75 and 10.79 s/step before these
changes (2.7-3.0 img/s), 3.71, 3.43 and 3.19 s/step after (8.6-10.0 img/s). The same step with the
environment variable ``GLIBC_TUNABLES=glibc.malloc.hugetlb=1`` (transparent huge pages for
malloc's mmap'd chunks: ~107k page faults per batch-8 step drop to ~500, a third of the CPU time
was spent in the kernel): 2.54 and 2.20 s/step (12.6-14.5 img/s).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from asmnet_jax.depthwise import (depthwise_conv3x3_shift, depthwise_conv3x3_shift_autodiff,
                                  depthwise_conv3x3_xla)
from asmnet_jax.models import BN_EPSILON, BatchNorm

POINTWISE = ((112, 16, 96), (56, 24, 144), (56, 144, 24), (14, 384, 96))
DEPTHWISE = ((112, 32, 1), (112, 96, 2), (56, 144, 1), (56, 144, 2), (14, 384, 1))
BATCHNORM = ((112, 96), (56, 144))


def _conv1x1(x, k):
    return lax.conv_general_dilated(x, k, (1, 1), "SAME",
                                    dimension_numbers=("NHWC", "HWIO", "NHWC"))


def _dot1x1(x, k):
    b, h, w, c = x.shape
    return (x.reshape(-1, c) @ k.reshape(c, -1)).reshape(b, h, w, -1)


def _fwd_and_vjp(fn, *args):
    """Jitted forward and forward + VJP (random cotangents) of fn(*args)."""
    out = jax.eval_shape(fn, *args)
    cotangent = jax.tree_util.tree_map(
        lambda o: jax.random.normal(jax.random.key(9), o.shape, o.dtype), out)
    fwd = jax.jit(fn)
    vjp = jax.jit(lambda *a: jax.vjp(fn, *a)[1](cotangent))
    return fwd, vjp


def cases(batch: int, ops):
    """{name: (fn, args)} for every op, shape and variant."""
    key = jax.random.key(0)
    out = {}
    if "pointwise" in ops:
        for hw, cin, cout in POINTWISE:
            x = jax.random.normal(key, (batch, hw, hw, cin))
            k = 0.1 * jax.random.normal(key, (1, 1, cin, cout))
            for name, fn in (("conv", _conv1x1), ("dot", _dot1x1)):
                out[f"pointwise/{hw}x{hw}x{cin}->{cout}/{name}"] = (fn, (x, k))
    if "depthwise" in ops:
        for hw, c, s in DEPTHWISE:
            x = jax.random.normal(key, (batch, hw, hw, c))
            k = jax.random.normal(key, (3, 3, 1, c))
            for name, fn in (("xla", depthwise_conv3x3_xla),
                             ("shift_autodiff", depthwise_conv3x3_shift_autodiff),
                             ("shift_custom_vjp", depthwise_conv3x3_shift)):
                out[f"depthwise/{hw}x{hw}x{c}s{s}/{name}"] = (
                    lambda x, k, fn=fn, s=s: fn(x, k, s), (x, k))
    if "batchnorm" in ops:
        for hw, c in BATCHNORM:
            x = 2.0 + jax.random.normal(key, (batch, hw, hw, c))
            for name, module in (("flax", nn.BatchNorm(use_running_average=False,
                                                       epsilon=BN_EPSILON)),
                                 ("asmnet", BatchNorm(use_running_average=False))):
                variables = module.init(key, x[:1])

                def fn(x, params, module=module, stats=variables["batch_stats"]):
                    y, updates = module.apply({"params": params, "batch_stats": stats}, x,
                                              mutable=["batch_stats"])
                    return y, updates["batch_stats"]["mean"]

                out[f"batchnorm/{hw}x{hw}x{c}/{name}"] = (fn, (x, variables["params"]))
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--ops", nargs="+", default=["pointwise", "depthwise", "batchnorm"],
                        choices=["pointwise", "depthwise", "batchnorm"])
    args = parser.parse_args()

    compiled = {}
    for name, (fn, fn_args) in cases(args.batch, args.ops).items():
        fwd, vjp = _fwd_and_vjp(fn, *fn_args)
        for kind, f in (("fwd", fwd), ("vjp", vjp)):
            jax.block_until_ready(f(*fn_args))  # compile and warm up
            compiled[f"{name}/{kind}_ms"] = (f, fn_args)
    times = {name: [] for name in compiled}
    for _ in range(args.reps):
        for name, (f, fn_args) in compiled.items():
            start = time.perf_counter()
            jax.block_until_ready(f(*fn_args))
            times[name].append(1e3 * (time.perf_counter() - start))
    result = {"batch": args.batch, "reps": args.reps, "backend": jax.default_backend(),
              "jax": jax.__version__}
    for name, values in times.items():
        result[name] = round(statistics.median(values), 2)
        print(f"{name:55s} {result[name]:9.2f} ms", flush=True)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
