"""ASMNet training and inference speed on this CPU: the JAX train step against the authors' Keras.

Three things are timed in one run, at ``--batch`` (32) and ``--size`` (224) by default:

* **jax**: this project's real train step, :func:`asmnet_jax.steps.compile_train_step` (jit over
  shard_map) on a 1-device mesh: ASMNet (68 points) from ``create_model`` (``--depthwise-impl``,
  default ``auto``: the shift-add depthwise form on the CPU), the full ASM-assisted loss (L_mse +
  alpha L_asm + 0.5 L_pose + head L2 0.01) with a real :class:`ShapeModel` fitted (90 % of the
  variance) to plausible random face shapes (the project's 3D template turned, scaled and jittered),
  and the project's optimizer (``make_optimizer`` / ``learning_rate_schedule`` of
  :mod:`asmnet_jax.train` with the default config: Adam, warm-up + cosine);
* **jax_noasm**: the same compiled step without the ASM term (``shape_model=None``: ASMNet_nr);
  its steps alternate with the ASM steps, so that drift of the machine's load hits both alike;
* **tf**: the authors' network built with ``keras.applications.MobileNetV2(weights=None)``
  (``tf_keras`` by default, ``--keras keras3`` for Keras 3) truncated as in docs/method.md
  section 1 (the six pooled taps block_1/3/6/10/13_project_BN and block_15_add, Dropout(0.3),
  Dense heads ``O_L`` and ``O_P`` with L2 0.01 on kernel and bias), trained by a ``tf.function``
  step (graph mode, ``jit_compile=False``: TensorFlow's own CPU kernels with oneDNN,
  ``TF_ENABLE_ONEDNN_OPTS=1``) with Adam (constant rate) and the same loss shape: MSE
  landmarks + 0.5 MSE pose + the heads' L2 (the ASM term is JAX-only).

For each: training img/s (``batch / median step time``), inference img/s at ``--batch``
(``batch / median forward time``, BN in inference mode, JAX through ``compile_eval_step``) and
the latency of one image (median forward time at batch 1), all after ``--warmup`` untimed calls
(the first compiles or traces), medians of ``--steps`` timed calls, each call waited for. Both
sides get uint8 NHWC images (what the input pipeline delivers) and convert them to [0, 1] inside.
The parameter counts of both models are printed and compared (Keras ``count_params()``: BN moving
statistics included; docs/method.md section 1.4: 1,439,507 for 68 points).

**Threads.** Both sides run on the same ``--threads`` CPUs (default: all this process may use).
Each side's process pins itself to the first N of them with ``os.sched_setaffinity`` before it
imports JAX or TensorFlow. That is the mechanism that counts for JAX: XLA's CPU client sizes its
intra-op thread pool from the schedulable CPUs and has no flag for the pool size
(``--xla_cpu_multi_thread_eigen=false`` only forces Eigen ops onto one thread), so the affinity
mask is what bounds it. TensorFlow is pinned the same way and in addition told
``tf.config.threading.set_intra_op_parallelism_threads(N)`` and
``set_inter_op_parallelism_threads(N)`` (its defaults on an N-core machine); otherwise TensorFlow
runs with its defaults (``OMP_NUM_THREADS``, ``MKL_NUM_THREADS`` and ``TF_ENABLE_ONEDNN_OPTS``
are removed from its environment: see ``child_env``). The thread count of each process after its
run is recorded.

**Why subprocesses.** Each side runs in its own subprocess of this script, one after the other:
JAX and TensorFlow both create thread pools at start-up (XLA's intra-op pool, TF's intra- and
inter-op pools and oneDNN's scratch state) whose idle and spinning workers would compete for the
same N cores if both lived in one process, and thread settings (affinity, environment) must be
in place before each library is imported. Separate processes give each side a machine of its
own, as a user of either would have; the memory of one is freed before the other starts. The
children print ``RESULT {json}`` lines that this parent merges.

    python -m experiments.bench_train                     # full comparison (minutes)
    python -m experiments.bench_train --sides jax --batch 2 --size 64 --steps 1 --warmup 1

The last output line is JSON with ``train_img_s_jax`` (with the ASM loss),
``train_img_s_jax_noasm``, ``train_img_s_tf``, ``train_ratio_jax_over_tf`` (JAX with ASM / TF),
``train_ratio_jax_noasm_over_tf`` (like for like), ``infer_img_s_*``, ``infer_ratio_jax_over_tf``,
``latency_ms_*``, ``latency_ratio_jax_over_tf`` (JAX / TF: below 1 is faster), ``asm_overhead``
(``(t_asm - t_noasm) / t_asm`` of the median step times), the parameter counts and the machine
(platform, CPUs, versions, date, ``other_load_cores``: the CPU time other processes took during
the run, in cores). Timings from a loaded machine are flagged (``busy``): compare only runs on an
idle machine.
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
    raise SystemExit("run it from the repository root as: python -m experiments.bench_train ...")

from experiments.common import emit, make_batch, prepare_run, run_side, say

SIDES = ("jax", "tf")
ASM_VARIANCE = 0.90
HEAD_L2 = 0.01
POSE_WEIGHT = 0.5
DROPOUT = 0.3
#: Keras layers whose outputs ASMNet pools (docs/method.md section 1.2).
TAP_LAYERS = ("block_1_project_BN", "block_3_project_BN", "block_6_project_BN",
              "block_10_project_BN", "block_13_project_BN", "block_15_add")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--steps", type=int, default=10, help="timed calls of each kind")
    parser.add_argument("--warmup", type=int, default=2,
                        help="untimed calls of each kind first (the first compiles)")
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)),
                        help="CPUs (and threads) for each side (default: all usable)")
    parser.add_argument("--num-landmarks", type=int, default=68, choices=(68, 98))
    parser.add_argument("--sides", nargs="+", default=list(SIDES), choices=SIDES)
    parser.add_argument("--keras", default="tf_keras", choices=("tf_keras", "keras3"),
                        help="Keras 2 (tf_keras) or Keras 3 for the TF side")
    parser.add_argument("--depthwise-impl", default="auto", choices=("auto", "shift", "xla"))
    parser.add_argument("--tf-onednn", default="on", choices=("on", "default"),
                        help="on: TF_ENABLE_ONEDNN_OPTS=1 (TF's fastest training here, but batch-1 "
                             "inference of 0.4-0.7 s); default: the variable unset")
    parser.add_argument("--malloc", default="thp", choices=("thp", "default"),
                        help="thp (default, what asmnet-train does): "
                             "GLIBC_TUNABLES=glibc.malloc.hugetlb=1 for both sides (glibc backs "
                             "its large allocations with transparent huge pages; "
                             "asmnet_jax/hugepages.py); default: glibc's defaults")
    parser.add_argument("--side", choices=SIDES, help=argparse.SUPPRESS)  # internal: child mode
    args = parser.parse_args(argv)
    if args.warmup < 1 or args.steps < 1:
        parser.error("--warmup and --steps must be at least 1")
    return args


def pin_cpus(threads):
    """Restricts this process to the first ``threads`` usable CPUs; returns them."""
    cpus = sorted(os.sched_getaffinity(0))[:max(threads, 1)]
    os.sched_setaffinity(0, cpus)
    return cpus


def process_threads():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("Threads:"):
                return int(line.split()[1])
    return None


def timed(call, sync):
    start = time.perf_counter()
    sync(call())
    return time.perf_counter() - start


def median_times(call, sync, warmup, steps):
    """(first call's time, median of ``steps`` timed calls after ``warmup`` untimed ones)."""
    first = timed(call, sync)
    for _ in range(warmup - 1):
        timed(call, sync)
    return first, statistics.median(timed(call, sync) for _ in range(steps))


# ----------------------------------------------------------------------------------------------
# JAX


def run_jax(args):
    import shutil

    import flax
    import jax
    import optax

    from asmnet_jax import steps as steps_lib
    from asmnet_jax.mesh import batch_sharding
    from asmnet_jax.models import count_parameters

    emit(jax_version=jax.__version__, flax_version=flax.__version__,
         optax_version=optax.__version__, jax_backend=jax.default_backend())
    host_batch, _ = make_batch(args)
    # What asmnet-train builds for the built-in config at this size and batch (on one CPU
    # device), fed the batch TensorFlow gets.
    run, folder = prepare_run({"input_size": args.size, "batch_size": args.batch,
                               "num_landmarks": args.num_landmarks,
                               "depthwise_impl": args.depthwise_impl, "input": "device"})
    shape_model = run.shape_model
    emit(asm_components=int(shape_model.num_components))
    model, mesh, state = run.model, run.mesh, run.state
    counts = count_parameters({"params": state.params, "batch_stats": state.batch_stats})
    emit(params_jax=counts)
    say(f"jax: parameters {counts}; ASM with {shape_model.num_components} components; "
        f"optimizer {run.config.optimizer.name}")

    replicated_asm = shape_model
    batch = jax.device_put(host_batch, batch_sharding(mesh))
    train_step = steps_lib.compile_train_step(model, run.optimizer, run.settings, mesh,
                                              teacher=run.teacher)
    holder = {"state": state}

    def step(asm):
        holder["state"], metrics = train_step(holder["state"], batch,
                                              replicated_asm if asm else None,
                                              run.teacher_variables)
        return holder["state"], metrics

    sync = jax.block_until_ready
    first = {asm: timed(lambda asm=asm: step(asm), sync) for asm in (True, False)}
    for _ in range(args.warmup - 1):
        for asm in (True, False):
            timed(lambda asm=asm: step(asm), sync)
    times = {True: [], False: []}
    for _ in range(args.steps):  # alternate, so that load changes hit both alike
        for asm in (True, False):
            times[asm].append(timed(lambda asm=asm: step(asm), sync))
    step_asm, step_noasm = (statistics.median(times[asm]) for asm in (True, False))
    loss = float(jax.device_get(step(True)[1]["total"]))
    emit(step_s_jax=step_asm, step_s_jax_noasm=step_noasm, train_img_s_jax=args.batch / step_asm,
         train_img_s_jax_noasm=args.batch / step_noasm, first_step_s_jax=first[True],
         first_step_s_jax_noasm=first[False], loss_jax=loss)
    say(f"jax train: {args.batch / step_asm:.2f} img/s with the ASM loss, "
        f"{args.batch / step_noasm:.2f} without (first steps incl. compile {first[True]:.1f} s, "
        f"{first[False]:.1f} s); loss {loss:.4f}")

    predict = steps_lib.compile_eval_step(model, mesh)
    variables = {"params": holder["state"].params, "batch_stats": holder["state"].batch_stats}
    images = batch["image"]
    single = jax.device_put({"image": host_batch["image"][:1]}, batch_sharding(mesh))
    first_infer, infer_s = median_times(lambda: predict(variables, {"image": images}), sync,
                                        args.warmup, args.steps)
    first_latency, latency_s = median_times(lambda: predict(variables, single), sync,
                                            args.warmup, args.steps)
    emit(infer_img_s_jax=args.batch / infer_s, latency_ms_jax=1e3 * latency_s,
         first_infer_s_jax=first_infer, first_latency_s_jax=first_latency,
         process_threads_jax=process_threads())
    say(f"jax inference: {args.batch / infer_s:.1f} img/s at batch {args.batch}, "
        f"{1e3 * latency_s:.1f} ms at batch 1")


# ----------------------------------------------------------------------------------------------
# TensorFlow / Keras
    run.checkpoints.close()
    shutil.rmtree(folder, ignore_errors=True)


def build_keras_asmnet(keras, size, num_landmarks):
    """The authors' ASMNet in Keras: MobileNetV2 (alpha 1) cut at block_15, six pooled taps."""
    layers = keras.layers
    base = keras.applications.MobileNetV2(input_shape=(size, size, 3), alpha=1.0,
                                          include_top=False, weights=None)
    pooled = [layers.GlobalAveragePooling2D()(base.get_layer(name).output) for name in TAP_LAYERS]
    features = layers.Dropout(DROPOUT)(layers.Concatenate()(pooled))
    regularised = dict(kernel_regularizer=keras.regularizers.l2(HEAD_L2),
                       bias_regularizer=keras.regularizers.l2(HEAD_L2))
    landmarks = layers.Dense(2 * num_landmarks, name="O_L", **regularised)(features)
    pose = layers.Dense(3, name="O_P", **regularised)(features)
    return keras.Model(base.input, [landmarks, pose], name="asmnet")


def run_tf(args):
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(args.threads)
    tf.config.threading.set_inter_op_parallelism_threads(args.threads)
    if args.keras == "tf_keras":
        import tf_keras as keras
    else:
        import keras
    emit(tf_version=tf.__version__, keras_version=f"{args.keras} {keras.__version__}",
         tf_onednn_opts=os.environ.get("TF_ENABLE_ONEDNN_OPTS"),
         tf_auto_jit=str(tf.config.optimizer.get_jit()) or "off")
    host_batch, _ = make_batch(args)
    keras.utils.set_random_seed(0)
    model = build_keras_asmnet(keras, args.size, args.num_landmarks)
    trainable = int(sum(np.prod(w.shape) for w in model.trainable_weights))
    total = int(model.count_params())
    counts = {"trainable": trainable, "batch_stats": total - trainable, "total": total}
    emit(params_tf=counts)
    say(f"tf: parameters {counts}")
    optimizer = keras.optimizers.Adam(1e-3)
    images = tf.constant(host_batch["image"])
    landmarks = tf.constant(host_batch["landmarks"])
    pose = tf.constant(host_batch["pose"])
    single = tf.constant(host_batch["image"][:1])

    def to_unit(images_u8):
        return tf.cast(images_u8, tf.float32) * (1.0 / 255.0)

    @tf.function(jit_compile=False)
    def train_step(images_u8, landmarks, pose):
        with tf.GradientTape() as tape:
            pred_landmarks, pred_pose = model(to_unit(images_u8), training=True)
            loss = (tf.reduce_mean(tf.square(landmarks - pred_landmarks))
                    + POSE_WEIGHT * tf.reduce_mean(tf.square(pose - pred_pose))
                    + tf.add_n(model.losses))
        grads = tape.gradient(loss, model.trainable_variables)
        optimizer.apply_gradients(zip(grads, model.trainable_variables))
        return loss

    @tf.function(jit_compile=False)
    def predict(images_u8):
        return model(to_unit(images_u8), training=False)

    def sync(outputs):
        tf.nest.map_structure(lambda t: t.numpy(), outputs)

    first, step_s = median_times(lambda: train_step(images, landmarks, pose), sync,
                                 args.warmup, args.steps)
    loss = float(train_step(images, landmarks, pose).numpy())
    emit(step_s_tf=step_s, train_img_s_tf=args.batch / step_s, first_step_s_tf=first,
         loss_tf=loss)
    say(f"tf train: {args.batch / step_s:.2f} img/s (first step incl. tracing {first:.1f} s); "
        f"loss {loss:.4f}")
    first_infer, infer_s = median_times(lambda: predict(images), sync, args.warmup, args.steps)
    first_latency, latency_s = median_times(lambda: predict(single), sync, args.warmup,
                                            args.steps)
    emit(infer_img_s_tf=args.batch / infer_s, latency_ms_tf=1e3 * latency_s,
         first_infer_s_tf=first_infer, first_latency_s_tf=first_latency,
         process_threads_tf=process_threads())
    say(f"tf inference: {args.batch / infer_s:.1f} img/s at batch {args.batch}, "
        f"{1e3 * latency_s:.1f} ms at batch 1")


# ----------------------------------------------------------------------------------------------
# Parent


def child_env(threads, tf_onednn="on", malloc="default"):
    from asmnet_jax.hugepages import with_hugetlb

    env = dict(os.environ)
    tunables = with_hugetlb(env.pop("GLIBC_TUNABLES", ""), enabled=malloc == "thp")
    if tunables:
        env["GLIBC_TUNABLES"] = tunables
    # Measured on this CPU (2026-11-28): TF_ENABLE_ONEDNN_OPTS=1 doubles TF's training throughput
    # (23-25 against 11.5 img/s) but makes its batch-1 inference take 430-750 ms instead of
    # 15-20 ms; so --tf-onednn chooses, and RESULTS.md reports both. OpenMP/MKL variables are
    # left to TensorFlow.
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "TF_ENABLE_ONEDNN_OPTS"):
        env.pop(name, None)
    if tf_onednn == "on":
        env["TF_ENABLE_ONEDNN_OPTS"] = "1"
    env.update(TF_NUM_INTRAOP_THREADS=str(threads), TF_NUM_INTEROP_THREADS=str(threads),
               TF_CPP_MIN_LOG_LEVEL="2", JAX_PLATFORMS="cpu",
               CUDA_VISIBLE_DEVICES="")
    return env


def cpu_snapshot():
    """(wall, busy CPU seconds of the whole machine, CPU seconds of this process and its waited-for
    children), from /proc/stat and os.times()."""
    ticks = os.sysconf("SC_CLK_TCK")
    with open("/proc/stat") as f:
        fields = [int(v) for v in f.readline().split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    t = os.times()
    own = t.user + t.system + t.children_user + t.children_system
    return time.monotonic(), (sum(fields[:8]) - idle) / ticks, own


def cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def ratio(a, b):
    return a / b if a is not None and b else None


#: Per-side results that the summary and the JSON line always carry (None where not measured).
MEASURED = ("step_s_jax", "step_s_jax_noasm", "train_img_s_jax", "train_img_s_jax_noasm",
            "infer_img_s_jax", "latency_ms_jax", "params_jax", "jax_version", "step_s_tf",
            "train_img_s_tf", "infer_img_s_tf", "latency_ms_tf", "params_tf", "tf_version")


def summarise(args, result):
    for key in MEASURED:
        result.setdefault(key, None)
    get = result.get
    result["train_ratio_jax_over_tf"] = ratio(get("train_img_s_jax"), get("train_img_s_tf"))
    result["train_ratio_jax_noasm_over_tf"] = ratio(get("train_img_s_jax_noasm"),
                                                    get("train_img_s_tf"))
    result["infer_ratio_jax_over_tf"] = ratio(get("infer_img_s_jax"), get("infer_img_s_tf"))
    result["latency_ratio_jax_over_tf"] = ratio(get("latency_ms_jax"), get("latency_ms_tf"))
    t_asm, t_noasm = get("step_s_jax"), get("step_s_jax_noasm")
    result["asm_overhead"] = (t_asm - t_noasm) / t_asm if t_asm and t_noasm else None
    counts = [get("params_jax"), get("params_tf")]
    result["params_equal"] = counts[0] == counts[1] if all(counts) else None

    def fmt(value, spec=".2f"):
        return "-" if value is None else format(value, spec)

    print(f"\nASMNet, batch {args.batch}, {args.size} x {args.size}, {args.threads} thread(s) "
          f"per side, {result['cpu_model']}")
    print(f"{'':<26}{'train img/s':>12}{'infer img/s':>13}{'latency ms':>12}")
    rows = [("JAX, ASM loss", "train_img_s_jax", "infer_img_s_jax", "latency_ms_jax"),
            ("JAX, no ASM loss", "train_img_s_jax_noasm", None, None),
            ("TF/Keras graph, oneDNN", "train_img_s_tf", "infer_img_s_tf", "latency_ms_tf"),
            ("JAX / TF", "train_ratio_jax_over_tf", "infer_ratio_jax_over_tf",
             "latency_ratio_jax_over_tf")]
    for label, *keys in rows:
        print(f"{label:<26}" + "".join(f"{fmt(get(k) if k else None):>{w}}"
                                       for k, w in zip(keys, (12, 13, 12))))
    overhead = result["asm_overhead"]
    print(f"JAX without the ASM loss / TF: {fmt(result['train_ratio_jax_noasm_over_tf'])}; "
          f"ASM loss overhead: {fmt(None if overhead is None else 100 * overhead, '.1f')} %")
    print(f"parameters: JAX {counts[0]}, Keras {counts[1]}, equal: {result['params_equal']}")
    for side in args.sides:
        if get(f"{side}_error"):
            print(f"{side}: {get(f'{side}_error')}")
    if result["busy"]:
        print(f"warning: the machine was busy (other processes used "
              f"{result['other_load_cores']:.1f} of {os.cpu_count()} cores during the run; load "
              f"average {result['loadavg_start'][0]:.1f} at the start): these timings are not "
              "comparable with an idle machine's")


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    if args.side:
        cpus = pin_cpus(args.threads)
        emit(**{f"cpus_{args.side}": cpus})
        {"jax": run_jax, "tf": run_tf}[args.side](args)
        return 0
    result = {"batch": args.batch, "size": args.size, "steps": args.steps,
              "warmup": args.warmup, "threads": args.threads, "num_landmarks": args.num_landmarks,
              "depthwise_impl": args.depthwise_impl, "keras": args.keras,
              "tf_onednn": args.tf_onednn, "malloc": args.malloc,
              "platform": platform.platform(), "machine": platform.machine(),
              "cpu_model": cpu_model(), "cpu_count": os.cpu_count(),
              "usable_cpus": len(os.sched_getaffinity(0)), "python": platform.python_version(),
              "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
              "loadavg_start": list(os.getloadavg())}
    env = child_env(args.threads, args.tf_onednn, args.malloc)
    before = cpu_snapshot()
    for side in args.sides:
        run_side("experiments.bench_train", side, argv, result, math.inf, env=env)
    after = cpu_snapshot()
    result["loadavg_end"] = list(os.getloadavg())
    # CPU time that other processes used while this benchmark ran, in cores: anything else
    # running distorts CPU timings.
    wall = max(after[0] - before[0], 1e-9)
    result["other_load_cores"] = max((after[1] - before[1]) - (after[2] - before[2]), 0.0) / wall
    # Measured during the run; the load average lags by minutes after other work has ended.
    result["busy"] = result["other_load_cores"] > 0.25
    summarise(args, result)
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
