#!/usr/bin/env bash
# The training loop at accelerator speed, on one GPU machine, in one call (it has no TensorFlow,
# TFDS, grain, OpenCV or ml_collections, and no network):
#
#   1. experiments/bench_loop.py --gpu: asmnet-train itself with the device-resident input path
#      (bf16, batch 256, 224 px) against its step alone (loop_img_s, step_img_s, loop_over_step);
#   2. the 300W recipe's 150 epochs (configs/asmnet_300w.py) on 1,811 training faces (as many as
#      the shared subset's training split) and 226 validation faces, bf16, batch 256, timed end
#      to end (asmnet-train's wall_s: loading, compiling, evaluations and checkpoints included).
#
# The faces are random-byte crops of the stored size (bench_loop.py --random-faces): 300W cannot
# be brought to that machine, and speed does not depend on what the pixels show (accuracy does:
# the NME of step 2 means nothing). Before the call, on a machine with network access:
#
#   pip download ml-collections --no-deps -d wheels     # pure Python; carried with the tree
#
# then run with the device tool, carrying "wheels":  bash experiments/gpu_loop.sh
# Results go to $OUT (or ./gpu_out): bench_loop_gpu.log, recipe_150.log; the last line of each
# is its JSON.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-gpu_out}
mkdir -p "$OUT"
if ! python -c "import ml_collections" 2>/dev/null; then
  pip install --no-deps --no-index wheels/*.whl
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
nvidia-smi --query-gpu=name,memory.total --format=csv | tee "$OUT/gpu.txt"

python experiments/bench_loop.py --gpu --config configs/asmnet_300w.py --set init=scratch \
  --random-faces 1811 --steps 100 --warmup 20 --log-every 10 --step-calls 100 \
  2>&1 | tee "$OUT/bench_loop_gpu.log"

python - <<'PY' 2>&1 | tee "$OUT/recipe_150.log"
import json, os, subprocess, sys, tempfile
sys.path.insert(0, "experiments")
from bench_loop import write_random_faces
root = tempfile.mkdtemp()
write_random_faces(os.path.join(root, "faces"), 1811)
flags = ["--config", "configs/asmnet_300w.py", "--workdir", os.path.join(root, "run"),
         "--config.init=scratch", "--config.dtype=bfloat16", "--config.batch_size=256",
         f"--config.arrays_dir={os.path.join(root, 'faces')}", "--config.progress_bar=False",
         "--config.input=device"]
done = subprocess.run([sys.executable, "-m", "asmnet_jax.cli.train", *flags],
                      capture_output=True, text=True)
print(done.stderr[-3000:])
summary = json.loads(done.stdout.strip().splitlines()[-1])
print(json.dumps({"recipe": "configs/asmnet_300w.py, 150 epochs, bf16, batch 256, random faces",
                  "wall_s": summary["wall_s"], "step": summary["step"],
                  "input": summary["input"]}))
PY
