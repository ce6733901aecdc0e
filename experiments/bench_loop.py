"""The whole training loop against its step alone, for each input path (``config.input``).

For each path in ``--inputs`` (``host``: grain + OpenCV on the host; ``device``: the set resident
in device memory, augmented inside the jitted step) this script runs ``asmnet-train`` itself in a
subprocess for ``--warmup + --steps`` steps and reads the loop's speed from the run's own
``metrics.jsonl`` (the ``img_per_s`` of every logged window after the first ``--warmup`` steps,
which hold the compilation; evaluation and checkpoints happen after the last window and are not
counted). Then one more subprocess times the step alone, as the loop's ceiling:

* ``step_img_s``: the compiled train step (:func:`asmnet_jax.steps.compile_train_step`) called
  on one batch already on the device (no input work at all), the way the loop calls it:
  ``--log-every`` calls back to back, then a wait for the last result; images over total time;
* ``resident_step_img_s``: the resident step (the same plus cutting and augmenting its own batch
  on the device), the same way.

``loop_over_step`` is ``loop_img_s / step_img_s`` for both paths: what the whole loop keeps of
the bare step. With ``--repeats R`` every path runs R times, the paths alternating, and the step
alone is timed in R alternating rounds; the figures are means over them (single runs on a shared
CPU move by 10-15 %). The host path loses the host's decoding and warping where it cannot hide them
behind the step; the device path loses the augmentation's cost inside the step.

    python -m experiments.bench_loop --config configs/asmnet_300w_cpu.py \\
        --set data_dir=~/tensorflow_datasets --set init=scratch --set input_size=224
    python -m experiments.bench_loop --gpu --config configs/asmnet_300w.py --set init=scratch \\
        --random-faces 2048                                 # on a GPU machine (no TensorFlow)

``--gpu`` is the GPU variant: bfloat16 compute, batch 256, 224 px, and the device path only (a GPU
machine without TensorFlow, grain or OpenCV reads a ``.npz`` export through ``arrays_dir``, made
here by ``asmnet-build-data ... --npz DIR``; ``--random-faces N`` writes a stand-in export of
random crops of the stored size instead, for machines the data cannot reach).
Without ``--config`` the built-in default (synthetic faces) is used. ``--set KEY=VALUE`` means
what ``--config.KEY=VALUE`` means to ``asmnet-train`` (``experiments.common.load_config``). The
last output line is JSON:
``{"paths": {PATH: {"loop_img_s", "step_img_s", "loop_over_step", ...}}, ...}``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time

if __name__ == "__main__" and not __package__:  # run as a file: the imports below would fail
    raise SystemExit("run it from the repository root as: python -m experiments.bench_loop ...")

from experiments import common

GPU_PRESET = {"dtype": "bfloat16", "batch_size": "256", "input_size": "224"}


def _run_flags(args, path: str, workdir: str):
    flags = ["--workdir", workdir]
    if args.config:
        flags += ["--config", os.path.abspath(args.config)]
    loop = {"input": path, "max_steps": str(args.warmup + args.steps),
            "log_every_steps": str(args.log_every), "eval_every_epochs": "100000",
            "checkpoint_every_epochs": "100000", "progress_bar": "False", "num_epochs": "100000",
            "final_flip_eval": "False"}
    for key, raw in list(args.overrides) + list(loop.items()):
        flags.append(f"--config.{key}={raw}")
    return flags


def train_windows(metrics_path: str, batch_size: int):
    """(first step, steps, seconds) of each logged training window in a run's ``metrics.jsonl``
    (a window's seconds from its step count and logged img/s)."""
    windows, previous = [], 0
    with open(metrics_path) as f:
        for line in f:
            record = json.loads(line)
            if record.get("kind") != "train":
                continue
            step = int(record["step"])
            if step > previous:
                windows.append((previous, step - previous,
                                (step - previous) * batch_size / float(record["img_per_s"])))
            previous = step
    return windows


def loop_speed(metrics_path: str, batch_size: int, warmup: int):
    """(img/s, steps counted) of the logged windows that start at or after step ``warmup``."""
    counted = [(n, s) for start, n, s in train_windows(metrics_path, batch_size) if start >= warmup]
    steps, seconds = sum(n for n, _ in counted), sum(s for _, s in counted)
    if steps == 0:
        raise SystemExit(f"{metrics_path}: no logged window after step {warmup}; raise --steps")
    return steps * batch_size / seconds, int(steps)


def run_loop(args, path: str, root: str, repeat: int = 0):
    workdir = os.path.join(root, f"{path}_{repeat}")
    command = [sys.executable, "-m", "asmnet_jax.cli.train", *_run_flags(args, path, workdir)]
    print("$", " ".join(command), flush=True)
    start = time.perf_counter()
    done = subprocess.run(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    wall = time.perf_counter() - start
    if done.returncode:
        print(done.stdout[-4000:])
        raise SystemExit(f"asmnet-train with input={path} failed (exit {done.returncode})")
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    if summary.get("input") != path:
        raise SystemExit(f"asmnet-train ran input={summary.get('input')}, asked for {path}")
    config = json.load(open(os.path.join(workdir, "config.json")))
    img_s, counted = loop_speed(os.path.join(workdir, "metrics.jsonl"), config["batch_size"],
                                args.warmup)
    return {"loop_img_s": img_s, "loop_steps_timed": counted, "run_wall_s": wall}


def _throughput(call, calls: int, window: int, warmup: int) -> float:
    """Calls per second of ``call`` made as the training loop makes them: ``window`` calls
    dispatched back to back, then a wait for the last one's result (the loop's logging step);
    ``calls`` timed calls in all, after ``warmup`` untimed ones."""
    import jax

    for _ in range(warmup):
        jax.block_until_ready(call())
    done, seconds = 0, 0.0
    while done < calls:
        count = min(window, calls - done)
        start = time.perf_counter()
        for _ in range(count):
            out = call()
        jax.block_until_ready(out)
        seconds += time.perf_counter() - start
        done += count
    return calls / seconds


def step_child(args) -> dict:
    """The step alone, in this (child) process, built by :func:`asmnet_jax.train.prepare` as
    ``asmnet-train`` builds it: the plain step on one batch already on the devices, and, when the
    device path is benchmarked, the resident step (the same plus cutting its own batch)."""
    import jax

    from asmnet_jax import steps as steps_lib
    from asmnet_jax import train

    config = common.load_config(args.config, args.overrides)
    config.input = "device" if "device" in args.inputs else "host"
    workdir = tempfile.mkdtemp(prefix="bench_loop_step_")
    run = train.prepare(config, workdir)
    key = jax.random.wrap_key_data(run.state.rng)
    batch = run.input.sample_batch(key)
    holder = {"state": run.state}

    def timed(step, data, calls):
        def call():
            holder["state"], metrics = step(holder["state"], data, run.shape_model,
                                            run.teacher_variables)
            return metrics
        return config.batch_size * _throughput(call, calls, args.log_every, 2)

    # The two steps alternate in --repeats rounds (the machine's drift hits both alike); each
    # figure is images over the total time of its rounds.
    plain = steps_lib.compile_train_step(run.model, run.optimizer, run.settings, run.mesh,
                                         teacher=run.teacher)
    rounds = max(args.repeats, 1)
    calls = max(args.step_calls // rounds, 1)
    timings = {"step_img_s": [], "resident_step_img_s": []}
    for _ in range(rounds):
        timings["step_img_s"].append(timed(plain, batch, calls))
        if run.input.kind == "device":
            timings["resident_step_img_s"].append(timed(run.train_step, run.input.data, calls))
    out = {key: len(v) / sum(1.0 / x for x in v) for key, v in timings.items() if v}
    out["batch_size"] = config.batch_size
    out["input_size"] = config.input_size
    out["dtype"] = config.dtype
    out["devices"] = [str(d) for d in jax.devices()]
    run.checkpoints.close()
    shutil.rmtree(workdir, ignore_errors=True)
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", help="training config file (default: the built-in default)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="config override, as --config.KEY=VALUE of asmnet-train")
    parser.add_argument("--inputs", nargs="+", default=["host", "device"],
                        choices=("host", "device"))
    parser.add_argument("--steps", type=int, default=40, help="timed loop steps per path")
    parser.add_argument("--warmup", type=int, default=10,
                        help="loop steps not timed (compilation, first batches)")
    parser.add_argument("--log-every", type=int, default=5, help="the loop's logging window")
    parser.add_argument("--step-calls", type=int, default=40, help="timed calls of the step alone")
    parser.add_argument("--repeats", type=int, default=1,
                        help="asmnet-train runs per path, alternating between the paths")
    parser.add_argument("--gpu", action="store_true",
                        help="GPU preset: bfloat16, batch 256, 224 px, device path only")
    parser.add_argument("--workdir", help="where the runs go (default: a temporary folder, "
                                          "removed afterwards)")
    parser.add_argument("--random-faces", type=int, metavar="N",
                        help="train on N random-byte crops written as a .npz export (dataset "
                             "w300, no data needed: for machines without the data)")
    parser.add_argument("--child-step", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if not args.child_step and (args.warmup % args.log_every or args.steps % args.log_every):
        parser.error("--warmup and --steps must be multiples of --log-every")
    overrides = common.parse_overrides(args.set)
    if args.gpu:
        given = {key for key, _ in overrides}
        overrides = [(k, v) for k, v in GPU_PRESET.items() if k not in given] + overrides
        if "host" in args.inputs and args.inputs != ["device"]:
            args.inputs = ["device"]
    args.overrides = overrides
    if args.child_step:
        from asmnet_jax import hugepages

        hugepages.reexec_with_thp()  # as asmnet-train does (the loop runs with it)
        print("RESULT " + json.dumps(step_child(args)), flush=True)
        return 0

    root = args.workdir or tempfile.mkdtemp(prefix="bench_loop_")
    if args.random_faces:
        exports = os.path.join(root, "random_faces")
        common.write_random_faces(exports, args.random_faces)
        args.overrides = overrides = overrides + [("dataset", "w300"), ("num_landmarks", "68"),
                                                  ("arrays_dir", exports),
                                                  ("train_split", "train"),
                                                  ("val_split", "validation")]
    try:
        # The paths alternate (host, device, host, device, ...) so that a drift of the machine's
        # speed hits them alike; each path's figure is the mean of its repeats.
        runs = {path: [] for path in args.inputs}
        for repeat in range(args.repeats):
            for path in args.inputs:
                runs[path].append(run_loop(args, path, root, repeat))
        paths = {}
        for path, results in runs.items():
            speeds = [r["loop_img_s"] for r in results]
            paths[path] = {"loop_img_s": sum(speeds) / len(speeds), "loop_img_s_runs": speeds,
                           "loop_steps_timed": sum(r["loop_steps_timed"] for r in results),
                           "run_wall_s": [r["run_wall_s"] for r in results]}
        command = [sys.executable, "-m", "experiments.bench_loop", "--child-step",
                   "--step-calls", str(args.step_calls), "--log-every", str(args.log_every),
                   "--repeats", str(args.repeats),
                   "--inputs", *args.inputs]
        if args.config:
            command += ["--config", os.path.abspath(args.config)]
        for key, raw in overrides:
            command += ["--set", f"{key}={raw}"]
        print("$", " ".join(command), flush=True)
        done = subprocess.run(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True, env=common.python_env())
        lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
        if done.returncode or not lines:
            print(done.stdout[-4000:])
            raise SystemExit("timing the step alone failed")
        step = json.loads(lines[-1][len("RESULT "):])
    finally:
        if not args.workdir:
            shutil.rmtree(root, ignore_errors=True)
    for path, result in paths.items():
        result["step_img_s"] = step["step_img_s"]
        result["loop_over_step"] = result["loop_img_s"] / step["step_img_s"]
        if path == "device":
            result["resident_step_img_s"] = step["resident_step_img_s"]
        print(f"{path:>6}: loop {result['loop_img_s']:8.1f} img/s, step alone "
              f"{step['step_img_s']:8.1f} img/s, loop/step {result['loop_over_step']:.3f}")
    print(json.dumps({
        "paths": paths, "config": args.config or "default", "set": dict(overrides),
        "batch_size": step["batch_size"], "input_size": step["input_size"],
        "dtype": step["dtype"], "devices": step["devices"], "steps": args.steps,
        "warmup": args.warmup, "machine": platform.platform(), "cpus": os.cpu_count(),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
