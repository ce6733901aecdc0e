#!/usr/bin/env bash
# The training loop at accelerator speed, on one GPU machine, in one call (it has no TensorFlow,
# TFDS, grain or ml_collections, and no network; the whole script took 6.5 minutes on an H200):
#
#   1. python -m experiments.bench_loop --gpu: asmnet-train itself with the device-resident input path
#      (bf16, batch 256, 224 px) against its step alone (loop_img_s, step_img_s, loop_over_step);
#   2. the 300W recipe's 150 epochs (configs/asmnet_300w.py) on 1,811 training faces (as many as
#      the shared subset's training split) and 226 validation faces, bf16, batch 256, timed end
#      to end (asmnet-train's wall_s: loading, compiling, evaluations and checkpoints included).
#
# The faces are random-byte crops of the stored size (bench_loop --random-faces): 300W cannot
# be brought to that machine, and speed does not depend on what the pixels show (accuracy does:
# the NME of step 2 means nothing). Before the call, on a machine with network access:
#
#   pip download ml-collections --no-deps -d wheels     # pure Python; carried with the tree
#
# then run with the device tool, carrying "wheels":  bash experiments/gpu_loop.sh
# (a dry run on a CPU: FACES=64 LOOP_ARGS="--steps 10 --warmup 10 --log-every 5 --step-calls 5
#  --set batch_size=8 --set input_size=64 --set dtype=float32" RECIPE_SET="--config.num_epochs=1
#  --config.batch_size=8 --config.input_size=64 --config.dtype=float32" bash experiments/gpu_loop.sh)
# Results go to $OUT (or ./gpu_out): bench_loop_gpu.log, recipe_150.log (the last line of each
# is its JSON) and recipe_metrics.jsonl (the recipe's windows, evaluations and their times).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-gpu_out}
mkdir -p "$OUT"
# Knobs for a dry run on a CPU (defaults: the GPU measurement described above).
FACES=${FACES:-1811}          # stand-in training faces (validation: FACES / 8)
LOOP_ARGS=${LOOP_ARGS:---steps 200 --warmup 40 --log-every 20 --step-calls 200}
RECIPE_SET=${RECIPE_SET:-}    # extra --config.KEY=VALUE flags for the recipe run
if ! python3 -c "import ml_collections" 2>/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site \
    wheels/*.whl
  export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
# One XLA cache for every process below (the loop, the step alone and the recipe share programs).
export JAX_COMPILATION_CACHE_DIR=${JAX_COMPILATION_CACHE_DIR:-/tmp/asmnet_xla_cache}
(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv || true) | tee "$OUT/gpu.txt"
python3 -c "import jax, flax, optax, orbax.checkpoint as o; print('jax', jax.__version__, \
  jax.devices(), 'flax', flax.__version__, 'optax', optax.__version__)" | tee -a "$OUT/gpu.txt"

# shellcheck disable=SC2086
python3 -m experiments.bench_loop --gpu --config configs/asmnet_300w.py --set init=scratch \
  --random-faces "$FACES" $LOOP_ARGS 2>&1 | tee "$OUT/bench_loop_gpu.log" \
  || echo "bench_loop failed; the recipe runs anyway" | tee -a "$OUT/bench_loop_gpu.log"

OUT=$OUT FACES=$FACES RECIPE_SET=$RECIPE_SET python3 - <<'PY' 2>&1 | tee "$OUT/recipe_150.log"
import json, os, subprocess, sys, tempfile, time
from experiments.bench_loop import train_windows
from experiments.common import write_random_faces
root = tempfile.mkdtemp()
write_random_faces(os.path.join(root, "faces"), int(os.environ["FACES"]))
flags = ["--config", "configs/asmnet_300w.py", "--workdir", os.path.join(root, "run"),
         "--config.init=scratch", "--config.dtype=bfloat16", "--config.batch_size=256",
         f"--config.arrays_dir={os.path.join(root, 'faces')}", "--config.progress_bar=False",
         "--config.input=device", *os.environ["RECIPE_SET"].split()]
print("$ asmnet-train", " ".join(flags), flush=True)
start = time.perf_counter()
done = subprocess.run([sys.executable, "-m", "asmnet_jax.cli.train", *flags],
                      capture_output=True, text=True)
outside = time.perf_counter() - start
print(done.stderr[-3000:])
print(done.stdout[-1500:])
if done.returncode:
    print(done.stdout[-3000:])
    sys.exit(f"asmnet-train failed (exit {done.returncode})")
summary = json.loads(done.stdout.strip().splitlines()[-1])
windows = [json.loads(line) for line in open(os.path.join(root, "run", "metrics.jsonl"))]
# Every logged window and evaluation, for the record (a window ending after an evaluation or a
# save holds its time).
with open(os.path.join(os.environ.get("OUT", "gpu_out"), "recipe_metrics.jsonl"), "w") as f:
    f.writelines(json.dumps(w) + "\n" for w in windows)
train = [w for w in windows if w.get("kind") == "train"]
times = [w for w in windows if w.get("kind") == "time"]
batch = json.load(open(os.path.join(root, "run", "config.json")))["batch_size"]
seconds = [s for _, _, s in train_windows(os.path.join(root, "run", "metrics.jsonl"), batch)]
speeds = sorted(w["img_per_s"] for w in train)
print(json.dumps({"recipe": "configs/asmnet_300w.py, bf16, batch 256, random faces",
                  "faces": int(os.environ["FACES"]), "set": os.environ["RECIPE_SET"],
                  "wall_s": summary.get("wall_s"), "process_s": round(outside, 1),
                  "step": summary.get("step"), "input": summary.get("input"),
                  "first_window_s": seconds[0] if seconds else None,
                  "windows_s": sum(seconds), "evals": sum("eval_s" in t for t in times),
                  "eval_s": sum(t.get("eval_s", 0.0) for t in times),
                  "saves": sum("save_s" in t for t in times),
                  "save_s": sum(t.get("save_s", 0.0) for t in times),
                  "logged_img_s_median": speeds[len(speeds) // 2] if speeds else None}))
PY
