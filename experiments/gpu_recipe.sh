#!/usr/bin/env bash
# The paper-scale recipe (configs/asmnet_300w.py: ImageNet init, 224 px, batch 64, float32,
# 150 epochs) on the real 300W faces, on one GPU machine, in one call: trains on the 1,811
# training faces, evaluates on the 201 validation faces, and prints one JSON line with the
# validation NME / FR / AUC (with and without flip averaging, after the last step and of the best
# checkpoint), the loop's img/s, the wall times, the device and the steps
# (python -m experiments.gpu_recipe train; see its docstring). The GPU machine has no
# TensorFlow, TFDS, grain or ml_collections and no network: the faces travel as a JPEG pack
# (~38 MB), the ImageNet weights beside them (9.4 MB, read with h5py, which the image has).
#
# Preparation, here (a machine with the .npz export, OpenCV and pip access):
#
#   python -m experiments.gpu_recipe pack --arrays-dir /work/npz --out gpu_pack \
#       --init /work/imagenet_mnv2.h5          # gpu_pack/: 47.2 MB (faces 37.7 MB + init 9.4 MB)
#   pip download ml-collections==1.1.0 --no-deps -d wheels          # 77 KB, pure Python
#   pip download simplejpeg==1.9.0 --no-deps --only-binary=:all: --python-version 3.12 \
#       --implementation cp --platform manylinux2014_x86_64 -d wheels   # 0.4 MB, used only if
#                                                                       # Pillow is missing there
#   (gpu_pack/ and wheels/ are ignored by .gitignore: they travel only when carried)
#
# The call (device tool `run`; the tree itself is ~5 MB, so ~53 MB travel of the 64 MiB allowed):
#
#   run(command="bash experiments/gpu_recipe.sh", carry=["gpu_pack", "wheels"], timeout_s=420)
#
# Not yet run on a GPU (no machine was lent to the task that wrote it). Estimate: the 150 epochs
# (4,200 steps of 64, float32) in 3-5 minutes end to end (the recipe at batch 256 bf16 on random
# faces took 130.5 s on an H200, experiments/RESULTS.md), well inside timeout_s=420. Overrides go
# in RECIPE_SET, e.g. RECIPE_SET="--set batch_size=256 --set dtype=bfloat16" (the speed runs'
# setting; the command is then "RECIPE_SET='...' bash experiments/gpu_recipe.sh"); if h5py is
# missing there, RECIPE_SET="--set init=scratch" trains without the ImageNet weights.
#
# Results in $OUT (or ./gpu_out; at most 8 files come back): gpu.txt (card, driver, versions),
# train.log (the whole output; its last line is the JSON), result.json (the same JSON),
# metrics.jsonl / metrics.json / config.json of the run, and model/ (the best checkpoint as a
# float16 model directory, ~3 MB: model.json + variables.npz; EXPORT=0 skips it).
#
# A CPU dry run (a few steps, small input; OpenCV, TensorFlow, TFDS and grain are blocked from
# import in the training process by default, BLOCK_IMPORTS below):
#   OUT=/tmp/gpu_recipe_out WORKDIR=/tmp/gpu_recipe_run RECIPE_SET="--set max_steps=12 \
#     --set log_every_steps=2 --set input_size=96 --set batch_size=8 --set init_bn_images=16" \
#     bash experiments/gpu_recipe.sh
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-gpu_out}
PACK=${PACK:-gpu_pack}
WORKDIR=${WORKDIR:-/tmp/asmnet_gpu_recipe}   # an existing run there is resumed
RECIPE_SET=${RECIPE_SET:-}     # extra arguments of gpu_recipe train, e.g. --set KEY=VALUE
BLOCK_IMPORTS=${BLOCK_IMPORTS-cv2,tensorflow,tensorflow_datasets,grain}
EXPORT=${EXPORT:-1}
FORCE_WHEELS=${FORCE_WHEELS:-0}  # 1: install the ml_collections wheel even where it imports
mkdir -p "$OUT"

# Carried wheels, each only where its module is missing, into a folder on PYTHONPATH.
SITE=$(mktemp -d /tmp/gpu_recipe_site.XXXXXX)
wheels=()
if [ "$FORCE_WHEELS" = 1 ] || ! python3 -c "import ml_collections" 2>/dev/null; then
  wheels+=(wheels/ml_collections-*.whl)
fi
if ! python3 -c "import PIL.Image" 2>/dev/null; then
  wheels+=(wheels/simplejpeg-*.whl)
fi
if [ ${#wheels[@]} -gt 0 ]; then
  echo "installing ${wheels[*]}"
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$SITE" \
    "${wheels[@]}"
fi
export PYTHONPATH=$PWD:$SITE${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1

(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv || true) > "$OUT/gpu.txt"
python3 -c "import sys, jax, flax, optax, numpy; print('python', sys.version.split()[0], 'jax', \
  jax.__version__, jax.devices(), 'flax', flax.__version__, 'optax', optax.__version__, 'numpy', \
  numpy.__version__)" >> "$OUT/gpu.txt" 2>&1 || true
cat "$OUT/gpu.txt"

args=(train --pack "$PACK" --workdir "$WORKDIR" --json-out "$OUT/result.json")
if [ -n "$BLOCK_IMPORTS" ]; then args+=(--block-imports "$BLOCK_IMPORTS"); fi
if [ "$EXPORT" = 1 ]; then args+=(--export "$OUT/model"); fi
status=0
# shellcheck disable=SC2086
python3 -m experiments.gpu_recipe "${args[@]}" $RECIPE_SET 2>&1 | tee "$OUT/train.log" \
  || status=$?
for f in metrics.jsonl metrics.json config.json; do
  if [ -f "$WORKDIR/$f" ]; then cp "$WORKDIR/$f" "$OUT/"; fi
done
rm -rf "$SITE"
exit "$status"
