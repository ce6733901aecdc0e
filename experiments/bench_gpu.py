"""ASMNet training throughput on one GPU: this project's JAX step against PyTorch, float32 and bf16.

Made for ONE call on a lent GPU machine (Python 3.12, jax, flax, optax, PyTorch; no TensorFlow,
no network; ml_collections carried as a wheel, as ``gpu_loop.sh`` does). Importing it costs only
``experiments.common`` (the standard library and NumPy); the JAX side builds its step through
:func:`asmnet_jax.train.prepare`, which imports no TensorFlow (the JSON line records
``forbidden_modules_loaded``, which must stay empty).

What is timed, for each compute dtype (``bfloat16`` first, it is the headline, then ``float32``):

* **JAX**: what ``asmnet-train`` runs for the built-in config at ``--size``, ``--batch`` and
  each dtype, built by :func:`asmnet_jax.train.prepare` (:func:`experiments.common.prepare_run`,
  on a stand-in set of random crops): the plain compiled train step (jit over shard_map) with
  ASMNet (68 points, dropout, BN with batch statistics; parameters stay float32, the heads,
  pooling and loss run in float32), the full ASM-assisted loss (L_mse + alpha L_asm + 0.5 L_pose
  + head L2 0.01) with the run's :class:`ShapeModel`, and the config's Adam update (optax), fed
  the same random batch as PyTorch.
* **PyTorch**: the same network written below (:class:`TorchASMNet`, same layers, channels and
  parameter count: checked, printed and recorded), the same loss with the same ASM in torch ops,
  fused Adam, ``channels_last`` memory format, ``torch.autocast(bfloat16)`` for the bf16 run and
  ``torch.compile`` (default mode; ``--no-compile`` for eager), ``cudnn.benchmark`` on. The heads,
  pooling and loss run in float32 as in the Flax model. Stride-2 convolutions pad (1, 1) as
  torchvision does rather than XLA/Keras' (0, 1): same shapes and arithmetic, outputs shifted by a
  pixel, which does not matter for a speed test.
* Float32 convolutions and matmuls may use TF32 on both sides (JAX's default precision on GPU;
  ``torch.set_float32_matmul_precision('high')`` and cudnn's default in PyTorch).
* ``--depthwise-impl`` sets the JAX model's depthwise form (``asmnet_jax.depthwise``; default
  ``auto``: on CUDA, cuDNN's grouped convolution in bf16 and the ``mixed`` form in float32).
* ``--profile DIR`` traces a few more steps of the first dtype on each side after its timing: JAX's
  ``jax_<dtype>.xplane.pb`` (``python -m experiments.xplane_ops`` sums its op times; TensorBoard's
  profile plugin shows the timeline) and
  PyTorch's operator and kernel table ``torch_<dtype>_kernels.txt``.

The input batch is uint8 NHWC images (as the input pipeline delivers them), float32 landmarks and
pose, already on the device; both steps convert the images to [0, 1] inside. Throughput is
``batch * steps / time`` over ``--repeats`` windows of ``--steps`` back-to-back steps after
``--warmup`` steps (the first compiles), the median window reported, synchronising only at window
ends.

Each framework runs in a subprocess of this script (one after the other, never concurrently) so
that each gets the whole GPU memory (JAX preallocates 75 % by default) and a crash or a
``torch.compile`` failure in one side still leaves the other's numbers. Children print
``RESULT {json}`` lines as each number is ready; the parent echoes them, merges them, rewrites
``$OUT/bench_gpu.json`` (when ``OUT`` is set) after each, and stops a child that would overrun
``--time-limit`` (default 450 s where an NVIDIA GPU is present, none elsewhere), so a call of
about 8 minutes always ends with the summary and the JSON line.

    python -m experiments.bench_gpu                  # batch 256, 224 x 224, both dtypes
    python -m experiments.bench_gpu --batch 4 --size 64 --steps 2 --warmup 1 --no-compile  # CPU

On a lent GPU machine, from the repository root (the project need not be installed), e.g.
``PYTHONUNBUFFERED=1 python3 -m experiments.bench_gpu 2>&1 | tee $OUT/bench_gpu.log`` with a
command timeout of 540 s or more. ``--dtypes bfloat16`` halves the time if it is short.

The last output line is JSON with ``train_img_s_{jax,torch}_{float32,bfloat16}``,
``ratio_jax_over_torch_{float32,bfloat16}``, ``bf16_reaches_target`` (JAX bf16 >= ``--target``,
10,000 img/s by default), the parameter counts, versions and the device.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import statistics
import sys
import time

import numpy as np

if __name__ == "__main__" and not __package__:  # run as a file: the imports below would fail
    raise SystemExit("run it from the repository root as: python -m experiments.bench_gpu ...")

from experiments.common import emit, make_batch, prepare_run, run_side, say

DTYPES = ("bfloat16", "float32")
SIDES = ("jax", "torch")
HEAD_L2 = 0.01
POSE_WEIGHT = 0.5
ASM_ALPHA = 2.0  # the first third of training
ASM_VARIANCE = 0.90
LEARNING_RATE = 1e-3
GPU_TIME_LIMIT_S = 450.0  # a lent GPU call runs at most ~8 minutes
FORBIDDEN_MODULES = ("tensorflow", "tf_keras", "keras")


def parse_args(argv=None):
    from asmnet_jax.depthwise import IMPLS  # imports jax alone, no device is touched

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--steps", type=int, default=20, help="timed steps per window")
    parser.add_argument("--repeats", type=int, default=3, help="timed windows (median reported)")
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps (the first compiles)")
    parser.add_argument("--num-landmarks", type=int, default=68, choices=(68, 98))
    parser.add_argument("--dtypes", nargs="+", default=list(DTYPES), choices=DTYPES)
    parser.add_argument("--sides", nargs="+", default=list(SIDES), choices=SIDES)
    parser.add_argument("--depthwise-impl", default="auto", choices=IMPLS,
                        help="the JAX model's depthwise_impl (asmnet_jax.depthwise; auto on CUDA: "
                             "cuDNN's grouped convolution in bf16, 'mixed' in float32)")
    parser.add_argument("--no-compile", action="store_true", help="PyTorch eager, no torch.compile")
    parser.add_argument("--compile-mode", default=None,
                        help="torch.compile mode (default: its default mode)")
    parser.add_argument("--target", type=float, default=10_000.0,
                        help="img/s the JAX bf16 step should reach")
    parser.add_argument("--time-limit", type=float, default=None,
                        help="seconds for the whole run, after which a child still running is "
                             "stopped (default: 450 where an NVIDIA GPU is present, else none; "
                             "0: none)")
    parser.add_argument("--profile", metavar="DIR",
                        help="after timing the first dtype, trace --profile-steps more steps of "
                             "each side into DIR: JAX's profiler trace as "
                             "jax_<dtype>.xplane.pb, PyTorch's kernel table as "
                             "torch_<dtype>_kernels.txt")
    parser.add_argument("--profile-steps", type=int, default=3)
    parser.add_argument("--side", choices=SIDES, help=argparse.SUPPRESS)  # internal: child mode
    return parser.parse_args(argv)


def rate(value):
    """img/s for printing: no decimals for GPU-sized numbers, some for CPU smoke tests."""
    return "-" if value is None else f"{value:,.0f}" if value >= 100 else f"{value:.3g}"


def time_windows(run_steps, sync, args):
    """Median img/s over ``args.repeats`` windows of ``args.steps`` steps; and the warm-up time."""
    start = time.perf_counter()
    run_steps(args.warmup)
    sync()
    warmup_s = time.perf_counter() - start
    rates = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        run_steps(args.steps)
        sync()
        rates.append(args.batch * args.steps / (time.perf_counter() - start))
    return statistics.median(rates), rates, warmup_s


# ----------------------------------------------------------------------------------------------
# JAX side


def run_jax(args):
    import shutil

    import jax

    from asmnet_jax import steps as steps_lib
    from asmnet_jax.mesh import batch_sharding
    from asmnet_jax.models import count_parameters

    device = jax.devices()[0]
    emit(jax_version=jax.__version__, jax_backend=jax.default_backend(),
         jax_device=getattr(device, "device_kind", str(device)))
    host_batch, _ = make_batch(args)

    def measure(dtype):  # a function, so that its buffers are freed before the next dtype
        # The model, optimizer, loss settings, state and ASM that asmnet-train builds for the
        # built-in config at this size and dtype; fed the batch PyTorch gets.
        run, folder = prepare_run({
            "dtype": dtype, "input_size": args.size, "batch_size": args.batch,
            "num_landmarks": args.num_landmarks, "depthwise_impl": args.depthwise_impl,
            "input": "device"})
        if dtype == args.dtypes[0]:
            state = run.state
            counts = count_parameters({"params": state.params, "batch_stats": state.batch_stats})
            emit(params_jax=counts, asm_components=int(run.shape_model.num_components))
            say(f"jax: parameters {counts}")
        batch = jax.device_put(host_batch, batch_sharding(run.mesh))
        step = steps_lib.compile_train_step(run.model, run.optimizer, run.settings, run.mesh,
                                            teacher=run.teacher)
        holder = {"state": run.state, "metrics": None}

        def run_steps(count):
            for _ in range(count):
                holder["state"], holder["metrics"] = step(holder["state"], batch,
                                                          run.shape_model,
                                                          run.teacher_variables)

        def sync():
            jax.block_until_ready((holder["state"], holder["metrics"]))

        img_s, rates, warmup_s = time_windows(run_steps, sync, args)
        report("jax", dtype, img_s, rates, warmup_s, float(holder["metrics"]["total"]))
        profile_first_dtype("jax", profile_jax, run_steps, sync, dtype, args)
        run.checkpoints.close()
        shutil.rmtree(folder, ignore_errors=True)

    for dtype in args.dtypes:
        measure(dtype)


def profile_first_dtype(side, profiler, run_steps, sync, dtype, args):
    """Runs ``profiler`` after the first dtype's timing when ``--profile`` asks for it. A profiler
    that fails only prints: it must not cost the numbers still to come."""
    if not args.profile or dtype != args.dtypes[0]:
        return
    try:
        profiler(run_steps, sync, dtype, args)
    except Exception as error:  # noqa: BLE001
        say(f"{side}: profiling failed: {type(error).__name__}: {error}")


def profile_jax(run_steps, sync, dtype, args):
    """Traces ``args.profile_steps`` steps with JAX's profiler; keeps the one .xplane.pb file (the
    trace directory is nested deeper than a lent machine's $OUT returns)."""
    import glob
    import shutil
    import tempfile

    import jax

    os.makedirs(args.profile, exist_ok=True)
    with tempfile.TemporaryDirectory() as trace_dir:
        with jax.profiler.trace(trace_dir):
            run_steps(args.profile_steps)
            sync()
        found = glob.glob(os.path.join(trace_dir, "**", "*.xplane.pb"), recursive=True)
        if not found:
            say(f"jax: the profiler wrote no .xplane.pb under {trace_dir}")
            return
        target = os.path.join(args.profile, f"jax_{dtype}.xplane.pb")
        shutil.copyfile(found[0], target)
    say(f"jax: {args.profile_steps} {dtype} steps traced to {target}")


def profile_torch(run_steps, sync, dtype, args):
    """Profiles ``args.profile_steps`` steps with PyTorch's profiler; writes the operator and
    kernel table sorted by device time."""
    import torch

    os.makedirs(args.profile, exist_ok=True)
    activities = [torch.profiler.ProfilerActivity.CPU]
    if torch.cuda.is_available():
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    with torch.profiler.profile(activities=activities) as prof:
        run_steps(args.profile_steps)
        sync()
    sort_by = "self_device_time_total" if torch.cuda.is_available() else "self_cpu_time_total"
    target = os.path.join(args.profile, f"torch_{dtype}_kernels.txt")
    with open(target, "w") as f:
        f.write(prof.key_averages().table(sort_by=sort_by, row_limit=60, max_name_column_width=90))
    say(f"torch: {args.profile_steps} {dtype} steps profiled to {target}")


def report(framework, dtype, img_s, rates, warmup_s, loss):
    """Emits and prints one framework's measured train-step throughput for ``dtype``."""
    emit(**{f"train_img_s_{framework}_{dtype}": img_s,
            f"windows_img_s_{framework}_{dtype}": rates,
            f"warmup_s_{framework}_{dtype}": warmup_s, f"loss_{framework}_{dtype}": loss})
    say(f"{framework} {dtype}: {rate(img_s)} img/s (windows {', '.join(map(rate, rates))});"
        f" warm-up incl. compile {warmup_s:.1f} s; loss {loss:.4f}")


# ----------------------------------------------------------------------------------------------
# PyTorch side


def build_torch_model(num_landmarks):
    """ASMNet in PyTorch: MobileNetV2 stem and blocks 0-15, six pooled taps, dropout, two heads."""
    import torch
    from torch import nn

    from asmnet_jax.models import (ASMNET_DROPOUT, ASMNET_TAPS, BLOCKS, BN_EPSILON, NUM_POSE,
                                   STEM_CHANNELS)

    def conv_bn(cin, cout, kernel, stride=1, groups=1, act=True):
        layers = [nn.Conv2d(cin, cout, kernel, stride, kernel // 2, groups=groups, bias=False),
                  nn.BatchNorm2d(cout, eps=BN_EPSILON, momentum=0.1)]
        if act:
            layers.append(nn.ReLU6(inplace=True))
        return layers

    class InvertedResidual(nn.Module):
        def __init__(self, cin, expansion, cout, stride):
            super().__init__()
            hidden = cin * expansion
            layers = conv_bn(cin, hidden, 1) if expansion != 1 else []
            layers += conv_bn(hidden, hidden, 3, stride, groups=hidden)
            layers += conv_bn(hidden, cout, 1, act=False)
            self.body = nn.Sequential(*layers)
            self.residual = stride == 1 and cin == cout

        def forward(self, x):
            y = self.body(x)
            return x + y if self.residual else y

    class TorchASMNet(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem = nn.Sequential(*conv_bn(3, STEM_CHANNELS, 3, 2))
            blocks, cin = [], STEM_CHANNELS
            for expansion, cout, stride in BLOCKS[:ASMNET_TAPS[-1] + 1]:
                blocks.append(InvertedResidual(cin, expansion, cout, stride))
                cin = cout
            self.blocks = nn.ModuleList(blocks)
            features = sum(BLOCKS[i][1] for i in ASMNET_TAPS)
            self.dropout = nn.Dropout(ASMNET_DROPOUT)
            self.landmark_head = nn.Linear(features, 2 * num_landmarks)
            self.pose_head = nn.Linear(features, NUM_POSE)

        def forward(self, x):
            x = self.stem(x)
            pooled = []
            for index, block in enumerate(self.blocks):
                x = block(x)
                if index in ASMNET_TAPS:
                    pooled.append(x.float().mean(dim=(2, 3)))
            with torch.autocast(x.device.type, enabled=False):
                features = self.dropout(torch.cat(pooled, dim=1))
                return self.landmark_head(features), self.pose_head(features)

    return TorchASMNet()


def torch_parameter_counts(model):
    """Counts in the Keras / :func:`asmnet_jax.models.count_parameters` sense (BN mean and
    variance are statistics; ``num_batches_tracked`` is not counted)."""
    trainable = sum(p.numel() for p in model.parameters())
    statistics_ = sum(b.numel() for name, b in model.named_buffers()
                      if name.endswith(("running_mean", "running_var")))
    return {"trainable": trainable, "batch_stats": statistics_, "total": trainable + statistics_}


def run_torch(args):
    import torch

    from asmnet_jax.asm import ShapeModel

    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    torch.backends.cudnn.benchmark = True
    torch.set_float32_matmul_precision("high")
    emit(torch_version=torch.__version__,
         torch_device=torch.cuda.get_device_name() if cuda else "cpu",
         torch_threads=torch.get_num_threads(), torch_compile=not args.no_compile)
    host_batch, asm_shapes = make_batch(args)
    shape_model = ShapeModel.fit(asm_shapes, ASM_VARIANCE)
    mean, components, eigenvalues = (torch.as_tensor(np.array(a), device=device)
                                     for a in (shape_model.mean, shape_model.components,
                                               shape_model.eigenvalues))
    limit = 3.0 * eigenvalues.sqrt()
    images = torch.as_tensor(host_batch["image"], device=device)  # (B, H, W, 3) uint8
    landmarks = torch.as_tensor(host_batch["landmarks"], device=device)
    pose = torch.as_tensor(host_batch["pose"], device=device)

    def asm_project(shapes):
        coefficients = torch.clamp((shapes - mean) @ components, -limit, limit)
        return mean + coefficients @ components.T

    def measure(dtype):  # a function, so that its memory is freed before the next dtype
        torch.manual_seed(0)
        model = build_torch_model(args.num_landmarks).to(device, memory_format=torch.channels_last)
        model.train()
        if dtype == args.dtypes[0]:
            counts = torch_parameter_counts(model)
            emit(params_torch=counts)
            say(f"torch: parameters {counts}")
        optimizer = torch.optim.Adam(model.parameters(), lr=LEARNING_RATE, fused=cuda)
        bf16 = dtype == "bfloat16"
        heads = (model.landmark_head, model.pose_head)

        def loss_fn(images, landmarks, pose, model=model, bf16=bf16, heads=heads):
            # NHWC uint8 -> NCHW view with channels_last strides, in [0, 1].
            x = images.permute(0, 3, 1, 2).float() * (1.0 / 255.0)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                pred_landmarks, pred_pose = model(x)
            mse = torch.mean((landmarks - pred_landmarks) ** 2)
            asm = torch.mean((asm_project(landmarks) - pred_landmarks) ** 2)
            pose_mse = torch.mean((pose - pred_pose) ** 2)
            penalty = sum((p ** 2).sum() for head in heads for p in head.parameters())
            return mse + ASM_ALPHA * asm + POSE_WEIGHT * pose_mse + HEAD_L2 * penalty

        compiled = loss_fn if args.no_compile else torch.compile(loss_fn, mode=args.compile_mode)
        holder = {"loss": None}

        def run_steps(count):
            for _ in range(count):
                loss = compiled(images, landmarks, pose)
                loss.backward()
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                holder["loss"] = loss

        def sync():
            if cuda:
                torch.cuda.synchronize()

        img_s, rates, warmup_s = time_windows(run_steps, sync, args)
        report("torch", dtype, img_s, rates, warmup_s, float(holder["loss"].detach()))
        profile_first_dtype("torch", profile_torch, run_steps, sync, dtype, args)

    for dtype in args.dtypes:
        measure(dtype)
        if cuda:
            torch.cuda.empty_cache()


def run_child(args):
    try:
        {"jax": run_jax, "torch": run_torch}[args.side](args)
    except ImportError as error:
        emit(**{f"{args.side}_error": f"not available: {error}"})
        say(f"{args.side}: not available ({error})")
    loaded = sorted({m.split(".")[0] for m in sys.modules} & set(FORBIDDEN_MODULES))
    emit(**{f"forbidden_modules_loaded_{args.side}": loaded})
    return 0


# ----------------------------------------------------------------------------------------------
# Parent: run the children, merge, summarise


def write_out(result):
    out = os.environ.get("OUT")
    if out:
        path = os.path.join(out, "bench_gpu.json")
        with open(path + ".tmp", "w") as f:
            json.dump(result, f, indent=1)
        os.replace(path + ".tmp", path)


def summarise(args, result):
    for dtype in args.dtypes:  # every documented key is present, None where not measured
        for side in SIDES:
            result.setdefault(f"train_img_s_{side}_{dtype}", None)
    for side in SIDES:
        result.setdefault(f"params_{side}", None)
    for dtype in args.dtypes:
        jax_rate = result.get(f"train_img_s_jax_{dtype}")
        torch_rate = result.get(f"train_img_s_torch_{dtype}")
        result[f"ratio_jax_over_torch_{dtype}"] = (
            jax_rate / torch_rate if jax_rate and torch_rate else None)
    bf16 = result.get("train_img_s_jax_bfloat16")
    result["bf16_target_img_s"] = args.target
    result["bf16_reaches_target"] = None if bf16 is None else bool(bf16 >= args.target)
    jax_counts, torch_counts = result.get("params_jax"), result.get("params_torch")
    result["params_equal"] = (None if not (jax_counts and torch_counts)
                              else jax_counts == torch_counts)

    def ratio(value):
        return "-" if value is None else f"{value:.2f}"

    print(f"\nASMNet train step, batch {args.batch}, {args.size} x {args.size}, "
          f"{result.get('jax_device') or result.get('torch_device') or '?'}")
    print(f"{'dtype':<10}{'JAX img/s':>12}{'torch img/s':>13}{'JAX/torch':>11}")
    for dtype in args.dtypes:
        print(f"{dtype:<10}{rate(result.get(f'train_img_s_jax_{dtype}')):>12}"
              f"{rate(result.get(f'train_img_s_torch_{dtype}')):>13}"
              f"{ratio(result.get(f'ratio_jax_over_torch_{dtype}')):>11}")
    print(f"parameters: JAX {jax_counts}, torch {torch_counts}, equal: {result['params_equal']}")
    if bf16 is not None:
        print(f"JAX bf16 {'reaches' if result['bf16_reaches_target'] else 'does not reach'} "
              f"{args.target:,.0f} img/s ({rate(bf16)})")
    for side in args.sides:
        if result.get(f"{side}_error"):
            print(f"{side}: {result[f'{side}_error']}")


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    if args.side:
        return run_child(args)
    if args.time_limit is None:
        args.time_limit = GPU_TIME_LIMIT_S if os.path.exists("/dev/nvidiactl") else 0.0
    deadline = time.monotonic() + args.time_limit if args.time_limit > 0 else math.inf
    result = {"batch": args.batch, "size": args.size, "steps": args.steps,
              "repeats": args.repeats, "warmup": args.warmup, "num_landmarks": args.num_landmarks,
              "dtypes": args.dtypes, "torch_compile": not args.no_compile,
              "depthwise_impl": args.depthwise_impl,
              "time_limit_s": args.time_limit or None,
              "python": platform.python_version(), "platform": platform.platform(),
              "cpu_count": os.cpu_count(),
              "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
    for side in args.sides:
        if time.monotonic() >= deadline:
            result[f"{side}_error"] = "not run: time limit reached"
            continue
        run_side("experiments.bench_gpu", side, argv, result, deadline, on_update=write_out)
    summarise(args, result)
    write_out(result)
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
