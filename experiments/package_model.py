"""Puts a trained model inside the package: ``asmnet_jax/pretrained/NAME`` (replacing what is there).

    python -m experiments.package_model --model runs/asmnet_300w_cpu --name asmnet-300w \\
        --command "asmnet-train --config configs/asmnet_300w_cpu.py --workdir runs/asmnet_300w_cpu"

Takes the workdir's best checkpoint (by validation NME; ``--which latest`` for the newest),
evaluates it on the run's validation split in float16 as stored (with and without test-time flip
averaging), and writes a compact model directory (``model.json`` + ``variables.npz`` in float16,
about 2.9 MB for ASMNet) whose ``model.json`` records the dataset, input size, face-box margin,
input range, the training command and config, and the measured validation figures, plus the
shape model of the training shapes as ``asm.npz`` (the run's ``asm.npz``; fitted on the run's
training split as training fits it, for a run without the ASM loss, or calibrated there, for an
``asm.npz`` from before the plausibility calibration), which gives predictions their
``shape_score``; then a ``README.md`` beside it. The last stdout line is JSON with the figures
and the directory's size.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import sys
import tempfile

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PRETRAINED = os.path.join(ROOT, "asmnet_jax", "pretrained")
FIGURES = ("nme", "fr", "auc", "count", "pose_mae")


def _evaluate(directory, split, data_dir, flip):
    from asmnet_jax import evaluate

    with tempfile.TemporaryDirectory() as out:
        result = evaluate.evaluate_checkpoint(directory, splits=[split], data_dir=data_dir,
                                              out=out, grid_faces=0, flip=flip)
    return {key: result[key] for key in FIGURES if key in result}


def _size(directory):
    return sum(os.path.getsize(os.path.join(root, name))
               for root, _, names in os.walk(directory) for name in names)


def _shape_model(loaded, config):
    """The run's shape model with its plausibility calibration: its ``asm.npz``, or one fitted on
    its training split's base-crop labels as ``asmnet-train`` fits it (``config.asm_variance``)."""
    from asmnet_jax.asm import ShapeModel
    from asmnet_jax.data import crop, sources

    if loaded.shape_model is not None and loaded.shape_model.calibrated:
        return loaded.shape_model
    source = sources.open_split(config, config.get("train_split", "train"), in_memory=True)
    shapes, _ = crop.base_labels(source, loaded.margin, loaded.input_size)
    if loaded.shape_model is not None:
        return loaded.shape_model.calibrate(shapes)
    return ShapeModel.fit(shapes, float(config.get("asm_variance", 0.95)))


def _commit():
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, text=True,
                              capture_output=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="training workdir of the model")
    parser.add_argument("--name", required=True, help="name of the shipped model")
    parser.add_argument("--which", choices=("best", "latest"), default="best")
    parser.add_argument("--command", required=True, help="the command that trained it")
    parser.add_argument("--data", default="", help="what it was trained on, in words")
    parser.add_argument("--licence", default="", help="the training data's terms, in words")
    args = parser.parse_args(argv)

    from asmnet_jax import inference, model_dir

    loaded = inference.load(args.model, which=args.which)
    config = loaded.config or {}
    with open(os.path.join(os.path.abspath(args.model), "metrics.json")) as f:
        run_summary = json.load(f)
    info = {"dataset": config.get("dataset"), "input_size": loaded.input_size,
            "margin": loaded.margin, "input_range": config.get("input_range", "unit"),
            "command": args.command, "data": args.data, "licence": args.licence,
            "trained_steps": loaded.step, "training_wall_s": run_summary.get("wall_s"),
            "commit": _commit(),
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "config": config}
    directory = os.path.join(PRETRAINED, args.name)
    shape_model = _shape_model(loaded, config)
    info["shape_model"] = {"file": model_dir.ASM_NPZ, "components": shape_model.num_components}
    model_dir.save_model(directory, loaded.model_name, loaded.num_landmarks, loaded.variables,
                           extra=info, overwrite=True, compact=True, dtype=np.float16,
                           shape_model=shape_model)
    data_dir = config.get("data_dir") or None
    split = config.get("val_split", "validation")
    validation = {"split": split, "weights": "float16 as stored",
                  "plain": _evaluate(directory, split, data_dir, False),
                  "flip": _evaluate(directory, split, data_dir, True)}
    info["validation"] = validation
    model_dir.save_model(directory, loaded.model_name, loaded.num_landmarks, loaded.variables,
                           extra=info, overwrite=True, compact=True, dtype=np.float16,
                           shape_model=shape_model)
    _write_readme(directory, args.name, loaded, info)
    summary = {"name": args.name, "directory": directory, "bytes": _size(directory),
               "validation": validation}
    print(json.dumps(summary))
    return 0


def _write_readme(directory, name, loaded, info):
    plain, flip = info["validation"]["plain"], info["validation"]["flip"]
    pose = plain.get("pose_mae") or {}
    minutes = (info["training_wall_s"] or 0) / 60
    text = f"""# {name}

{loaded.model_name} ({loaded.num_landmarks} points and head pose), {info['input_size']} x \
{info['input_size']} input, float16 weights ({_size(directory) / 2 ** 20:.1f} MB).

- Trained on: {info['data'] or info['dataset']}
- Terms: {info['licence'] or 'see the dataset'}
- Command: `{info['command']}` ({minutes:.1f} min of training wall time, step \
{info['trained_steps']}, commit {info['commit']})
- Validation split `{info['validation']['split']}` ({plain.get('count')} faces), these weights:
  NME {plain['nme']:.2f} % (inter-ocular), FR@0.1 {plain['fr']:.1f} %, AUC@0.1 \
{plain['auc']:.3f}; with flip averaging NME {flip['nme']:.2f} %, FR {flip['fr']:.1f} %, AUC \
{flip['auc']:.3f}; pose MAE yaw {pose.get('yaw', float('nan')):.2f}, pitch \
{pose.get('pitch', float('nan')):.2f}, roll {pose.get('roll', float('nan')):.2f} degrees \
(against PnP labels).

Use it: `asmnet-predict photo.jpg` (the default model) or `asmnet-eval --model {name}`.
`model.json` holds the full training config. `asm.npz` is the shape model of the training shapes
({info['shape_model']['components']} principal components, calibrated on them): it gives every
prediction its `shape_score` (see `asmnet_jax/asm.py`).
"""
    with open(os.path.join(directory, "README.md"), "w") as f:
        f.write(text)


if __name__ == "__main__":
    sys.exit(main())
