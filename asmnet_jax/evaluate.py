"""A trained model's NME, failure rate, AUC, CED and pose MAE on dataset splits.

The command is ``asmnet-eval`` (:mod:`asmnet_jax.cli.eval`)::

    asmnet-eval --model runs/asmnet_300w          # best checkpoint; common, challenging, full
    asmnet-eval --model runs/x --which latest --split validation test
    asmnet-eval --model runs/x/checkpoints/3000 --split common,challenging
    asmnet-eval --model models/authors_wflw --dataset wflw --data-dir ~/tensorflow_datasets

The model comes from :func:`asmnet_jax.inference.load` (a training workdir, one of its checkpoints
``WORKDIR/checkpoints/STEP``, or a model directory). The data: ``synthetic`` (the run's own
procedural faces, rendered as training renders them: no dataset to build), or the TFDS datasets
``w300``, ``wflw`` and ``synthetic_faces`` (built by ``asmnet-build-data``).

Default splits: 300W ``common`` and ``challenging``, plus ``full``, which is not predicted again but
is their face-weighted union (:func:`asmnet_jax.metrics.full_set_nme`, the 300W convention; the same
happens whenever both are asked for); WFLW ``test`` and the attribute subsets ``test_<attribute>``
that were built; ``synthetic`` ``validation``; ``synthetic_faces`` ``test``. WFLW NMEs are reported
with both the inter-ocular and the inter-pupil normaliser (docs/method.md section 6).

Written to ``--out`` (default ``WORKDIR/eval/STEP``, or ``./eval_NAME`` for a model directory):

* ``results.json``: the headline ``nme`` (%), ``fr`` (%), ``auc`` (fraction), ``count`` and, when
  the data has poses, ``pose_mae`` (degrees) of the headline split (``full``, else ``test``, else
  the first split asked for), and ``splits``: the same per split, plus ``by_normaliser``. The same
  JSON is the last line of stdout.
* ``report.md``: tables laid out like the paper's (one row per model, one column per subset:
  300W common / challenging / full; WFLW test and its six attribute subsets).
* ``ced.png``: the cumulative error distributions; ``predictions.png``: faces with the ground
  truth (green) and the prediction (red), from the best to the worst NME.
* ``per_face.csv`` (split, index, name, NMEs in %, pose errors in degrees) and ``per_face.npz``
  (per split: ``SPLIT/names``, ``SPLIT/index``, ``SPLIT/pred`` and ``SPLIT/gt`` (N, n, 2) in pixels
  of the ``input_size`` model input, ``SPLIT/nme_NORMALISER`` fractions, ``SPLIT/pose_pred_deg``
  and ``SPLIT/pose_gt_deg`` (N, 3)).

The faces are predicted by :class:`asmnet_jax.evaluation.EvalSet`, as training's validation
predicts them: the same weights, split and ``--batch-size`` (training's ``config.batch_size``) give
the same digits.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

import jax

from asmnet_jax import inference, metrics, model_dir, reports
from asmnet_jax.config_base import base_config
from asmnet_jax.data import sources
from asmnet_jax.data.sources import DATASETS, SYNTHETIC_SPLITS, available_splits
from asmnet_jax.errors import EvalError
from asmnet_jax.evaluation import EvalSet, FacePredictions
from asmnet_jax.files import atomic_open
from asmnet_jax.mesh import make_mesh, replicate

log = logging.getLogger(__name__)

#: The 300W full set is the union of these two test sets.
FULL_SET_PARTS = ("common", "challenging")
WFLW_ATTRIBUTES = ("pose", "expression", "illumination", "makeup", "occlusion", "blur")
DEFAULT_BATCH_SIZE = 32
#: Faces in the prediction grid, and the smallest tile side (small inputs are enlarged to it).
OUTPUT_FILES = {"json": "results.json", "report": "report.md", "ced": "ced.png",
                "grid": "predictions.png", "per_face_csv": "per_face.csv",
                "per_face_npz": "per_face.npz"}


# ----------------------------------------------------------------------------------------------
# Summaries


def summarize_splits(errors: Mapping[str, Mapping[str, np.ndarray]],
                     threshold: float = metrics.DEFAULT_THRESHOLD,
                     poses: Optional[Mapping[str, Tuple[np.ndarray, np.ndarray]]] = None
                     ) -> Dict[str, Dict]:
    """Per-split numbers from per-face errors.

    Args:
      errors: ``{split: {normaliser: per-face NME (N,) as fractions}}``; the first normaliser is
        the headline one, and every split lists the same normalisers.
      threshold: failure threshold on the NME (a fraction).
      poses: ``{split: (predicted (N, 3), labels (N, 3))}`` in degrees, for splits with poses.

    Returns:
      ``{split: summary}`` in the order of ``errors``: :func:`asmnet_jax.metrics.summarize` of the
      headline normaliser (``count``, ``nme`` %, ``fr`` %, ``auc`` fraction, ``threshold``, and
      ``pose_mae`` degrees when the split has poses), plus ``normaliser`` and ``by_normaliser``
      (``{normaliser: {'nme', 'fr', 'auc'}}`` for all of them). When ``common`` and
      ``challenging`` are there and ``full`` is not, ``full`` is added as their union, weighted by
      faces (:func:`asmnet_jax.metrics.full_set_nme`), the 300W convention.
    """
    errors = {split: dict(by_norm) for split, by_norm in errors.items()}
    poses = dict(poses or {})
    if not errors:
        raise EvalError("no split to summarise")
    normalisers = list(next(iter(errors.values())))
    for split, by_norm in errors.items():
        if list(by_norm) != normalisers:
            raise EvalError(f"split {split!r} has normalisers {list(by_norm)}, expected "
                            f"{normalisers}")
    if all(part in errors for part in FULL_SET_PARTS) and "full" not in errors:
        errors["full"] = {norm: metrics.full_set_nme(*(errors[p][norm] for p in FULL_SET_PARTS))
                          for norm in normalisers}
        if all(part in poses for part in FULL_SET_PARTS):
            poses["full"] = tuple(np.concatenate([poses[p][i] for p in FULL_SET_PARTS])
                                  for i in (0, 1))
    results: Dict[str, Dict] = {}
    for split, by_norm in errors.items():
        pred, gt = poses.get(split, (None, None))
        summary = metrics.summarize(by_norm[normalisers[0]], threshold, pred, gt)
        summary["normaliser"] = normalisers[0]
        summary["by_normaliser"] = {}
        for norm, nme in by_norm.items():
            s = metrics.summarize(nme, threshold)
            summary["by_normaliser"][norm] = {"nme": s["nme"], "fr": s["fr"], "auc": s["auc"]}
        results[split] = summary
    return results


def headline_split(results: Mapping[str, Mapping], requested: Sequence[str]) -> str:
    """The split whose numbers head the JSON: ``full``, else ``test``, else the first asked for."""
    for split in ("full", "test"):
        if split in results:
            return split
    return next(s for s in requested if s in results) if requested else next(iter(results))


# ----------------------------------------------------------------------------------------------
# Data


def default_splits(dataset: str, available: Sequence[str]) -> List[str]:
    """300W: common + challenging (full follows); WFLW: test and the attribute subsets that
    exist; synthetic: validation; synthetic_faces: test."""
    if dataset == "w300":
        return list(FULL_SET_PARTS)
    if dataset == "wflw":
        return ["test"] + [f"test_{a}" for a in WFLW_ATTRIBUTES if f"test_{a}" in available]
    return ["validation"] if dataset == "synthetic" else ["test"]


def resolve_splits(requested: Optional[Sequence[str]], dataset: str,
                   available: Sequence[str]) -> Tuple[List[str], List[str]]:
    """(splits to report, splits to predict) from ``--split`` values (names or comma lists).

    ``full`` is not predicted when ``common`` and ``challenging`` are (it is their union); it is
    added to the report then. Raises :class:`EvalError` for a split ``dataset`` does not have,
    listing those it has.
    """
    names: List[str] = []
    for item in requested or default_splits(dataset, available):
        for name in str(item).split(","):
            name = name.strip()
            if name and name not in names:
                names.append(name)
    if not names:
        raise EvalError("--split: no split named")
    derive_full = all(part in names for part in FULL_SET_PARTS)
    for name in names:
        if name not in available and not (name == "full" and derive_full):
            raise EvalError(f"dataset {dataset!r} has no split {name!r}; it has "
                            f"{', '.join(sorted(available))}")
    predicted = [n for n in names if not (n == "full" and derive_full)]
    reported = list(names)
    if derive_full and "full" not in reported:
        reported.append("full")
    return reported, predicted


def check_markup(source, num_landmarks: int, dataset: str, split: str) -> None:
    """Raises :class:`EvalError` if the faces of ``source`` do not have the model's point count."""
    example = source[0]
    have = int(np.shape(example["landmarks"])[0])
    if have != num_landmarks:
        raise EvalError(f"landmark-count mismatch: the model predicts {num_landmarks} points but "
                        f"dataset {dataset!r} split {split!r} has {have} points per face")


# ----------------------------------------------------------------------------------------------
# A checkpoint's evaluation


def _normalisers(primary: str, num_landmarks: int) -> List[str]:
    if primary not in metrics.NORMALISERS:
        raise EvalError(f"--normaliser {primary!r} is not one of {', '.join(metrics.NORMALISERS)}")
    out = [primary]
    if num_landmarks == 98:  # WFLW: the inter-ocular and the authors' inter-pupil normaliser
        out += [n for n in ("inter_ocular", "inter_pupil") if n not in out]
    return out


def _model_dataset(path: str) -> Optional[str]:
    """``dataset`` recorded in a model directory's model.json, if any."""
    if not os.path.isfile(os.path.join(path, model_dir.MODEL_JSON)):
        return None
    return model_dir.read_model_info(path).get("dataset")


def _data_config(loaded) -> Dict:
    """The run's config, or for a model directory the defaults with the model's markup and size."""
    if loaded.config is not None:
        return dict(loaded.config)
    config = base_config().to_dict()
    config.update(num_landmarks=loaded.num_landmarks, input_size=loaded.input_size)
    return config


def default_out_dir(loaded) -> str:
    """``WORKDIR/eval/STEP`` for a checkpoint of a run, ``./eval_NAME`` for a model directory."""
    if loaded.step is not None:
        workdir = os.path.dirname(os.path.dirname(loaded.path))
        return os.path.join(workdir, "eval", str(loaded.step))
    return os.path.abspath(f"eval_{os.path.basename(os.path.normpath(loaded.path))}")


def evaluate_checkpoint(model, *, dataset: Optional[str] = None,
                        splits: Optional[Sequence[str]] = None, data_dir=None,
                        tfds_config: Optional[str] = None, arrays_dir: Optional[str] = None, normaliser: str = "inter_ocular",
                        threshold: float = metrics.DEFAULT_THRESHOLD,
                        batch_size: int = DEFAULT_BATCH_SIZE, out: Optional[str] = None,
                        which: str = "best", step: Optional[int] = None,
                        grid_faces: int = reports.GRID_FACES, flip: bool = False) -> Dict:
    """Evaluates a model (see the module docstring) and writes the outputs; returns the JSON dict.

    ``model`` is a :class:`asmnet_jax.inference.LoadedModel`, or what
    :func:`asmnet_jax.inference.load` takes (then loaded with ``which`` and ``step``).
    ``threshold`` is a fraction of the normaliser; ``batch_size`` must be divisible by the local
    device count. ``flip`` averages every prediction with the mirrored prediction on the
    horizontally flipped crop (test-time augmentation, :func:`asmnet_jax.steps.eval_step`).
    Raises :class:`EvalError`, another :class:`asmnet_jax.errors.AsmnetError` (a model or data
    that cannot be read) or ``FileNotFoundError``, naming the path, split or option.
    """
    start = time.perf_counter()
    if not (isinstance(threshold, (int, float)) and math.isfinite(threshold) and threshold > 0):
        raise EvalError(f"--threshold must be a positive number, got {threshold!r}")
    devices = jax.local_devices()
    if batch_size <= 0 or batch_size % len(devices):
        raise EvalError(f"--batch-size {batch_size} is not a positive multiple of the "
                        f"{len(devices)} local devices")
    if which not in ("best", "latest"):
        raise EvalError(f"--which must be best or latest, got {which!r}")
    loaded = (model if isinstance(model, inference.LoadedModel)
              else inference.load(model, step=step, which=which))
    config = _data_config(loaded)
    dataset = dataset or (config.get("dataset") if loaded.config is not None
                          else _model_dataset(loaded.path))
    if dataset is None:
        raise EvalError(f"{loaded.path}: a model directory without a dataset in its "
                        f"model.json: pass --dataset ({', '.join(DATASETS)})")
    if dataset not in DATASETS:
        raise EvalError(f"unknown dataset {dataset!r}; use one of {', '.join(DATASETS)}")
    data_dir = data_dir or config.get("data_dir") or None
    arrays_dir = arrays_dir or config.get("arrays_dir") or None
    available = available_splits(dataset, data_dir, tfds_config, arrays_dir)
    reported, predicted = resolve_splits(splits, dataset, available)
    normalisers = _normalisers(normaliser, loaded.num_landmarks)

    arrays = {}
    for split in predicted:
        source = sources.open_split(config, split, dataset=dataset, data_dir=data_dir,
                                    arrays_dir=arrays_dir, tfds_config=tfds_config)
        if len(source) == 0:
            raise EvalError(f"dataset {dataset!r} split {split!r} holds no faces")
        check_markup(source, loaded.num_landmarks, dataset, split)
        arrays[split] = sources.host_arrays(source, loaded.num_landmarks,
                                            f"dataset {dataset!r} split {split!r}")

    mesh = make_mesh(devices)
    variables = replicate(loaded.variables, mesh)
    faces: Dict[str, FacePredictions] = {}
    for split in predicted:
        split_start = time.perf_counter()
        faces[split] = EvalSet(arrays[split], loaded.model, mesh, loaded.input_size,
                               loaded.margin, batch_size).predict(variables, flip=flip)
        log.info("%s: %d faces in %.1f s", split, len(faces[split]),
                 time.perf_counter() - split_start)
    nme = {split: {norm: f.nme(norm) for norm in normalisers} for split, f in faces.items()}
    poses = {split: (f.pose_deg, f.gt_pose_deg) for split, f in faces.items() if f.has_pose}
    results = summarize_splits(nme, threshold, poses)
    results = {split: results[split] for split in reported}

    out = os.path.abspath(out or default_out_dir(loaded))
    files, report = _write_reports(out, loaded, dataset, results, reported, faces, nme,
                                   normalisers[0], arrays, threshold, flip, grid_faces)
    head = headline_split(results, reported)
    summary = {key: results[head][key] for key in ("nme", "fr", "auc", "count", "pose_mae")
               if key in results[head]}
    output = {**summary, "split": head, "normaliser": normalisers[0],
              "normalisers": normalisers, "threshold": float(threshold), "flip": bool(flip),
              "dataset": dataset,
              "data_dir": data_dir, "model": loaded.describe(), "splits": results,
              "predicted_splits": predicted, "out": out, "files": files,
              "wall_s": time.perf_counter() - start}
    with atomic_open(files["json"]) as f:
        json.dump(output, f, indent=2)
        f.write("\n")
    output["report"] = report
    return output


def _split_errors(split: str, nme: Mapping[str, Mapping[str, np.ndarray]],
                  normaliser: str) -> np.ndarray:
    """Per-face errors of a reported split; ``full`` may be derived from its two parts."""
    if split in nme:
        return nme[split][normaliser]
    return metrics.full_set_nme(*(nme[p][normaliser] for p in FULL_SET_PARTS))


def _write_reports(out: str, loaded, dataset: str, results, reported, faces, nme,
                   normaliser: str, arrays, threshold: float, flip: bool, grid_faces: int):
    """Writes ``report.md``, the CED plot, the prediction grid and the per-face files to
    ``out``; returns ({output: path}, the report's Markdown)."""
    os.makedirs(out, exist_ok=True)
    files = {key: os.path.join(out, name) for key, name in OUTPUT_FILES.items()}
    row = loaded.model_name + (f" (step {loaded.step})" if loaded.step is not None else "")
    notes = [f"Model: `{loaded.path}`",
             f"Input: {loaded.input_size} px, face box margin {loaded.margin:g}"
             f"{'; flip averaging' if flip else ''}; failure "
             f"threshold {threshold:g} (NME as a fraction of the normaliser)",
             f"Files: per-face results in `{OUTPUT_FILES['per_face_csv']}` and "
             f"`{OUTPUT_FILES['per_face_npz']}`, CED in `{OUTPUT_FILES['ced']}`, predictions "
             f"(green: ground truth, red: prediction; best to worst NME) in "
             f"`{OUTPUT_FILES['grid']}`"]
    report = reports.markdown_report(results, dataset, row, threshold, notes)
    with atomic_open(files["report"]) as f:
        f.write(report)
    reports.plot_ced(files["ced"], {split: _split_errors(split, nme, normaliser)
                                    for split in reported}, threshold, normaliser)
    selection = reports.grid_selection(faces, {s: nme[s][normaliser] for s in faces}, grid_faces)
    if selection:
        reports.write_grid(files["grid"], selection, faces, arrays, loaded.input_size,
                           loaded.margin)
    else:
        files.pop("grid")
    reports.write_per_face(files["per_face_csv"], files["per_face_npz"], faces, nme,
                           loaded.input_size)
    return files, report
