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

:func:`predict_faces` is the one evaluation loop of the project: the per-epoch validation of
training (:func:`asmnet_jax.train.evaluate`) calls it too.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import logging
import math
import os
import time
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from asmnet_jax import landmarks as lm
from asmnet_jax import metrics
from asmnet_jax.data import pipeline
from asmnet_jax.errors import AsmnetError

log = logging.getLogger(__name__)

DATASETS = ("synthetic", "w300", "wflw", "synthetic_faces")
SYNTHETIC_SPLITS = ("train", "validation", "test")
#: The 300W full set is the union of these two test sets.
FULL_SET_PARTS = ("common", "challenging")
WFLW_ATTRIBUTES = ("pose", "expression", "illumination", "makeup", "occlusion", "blur")
DEFAULT_BATCH_SIZE = 32
#: Faces in the prediction grid, and the smallest tile side (small inputs are enlarged to it).
GRID_FACES = 16
GRID_MIN_TILE = 128
GRID_PAD = 2
GT_COLOUR = (0, 200, 0)       # RGB
PRED_COLOUR = (255, 40, 40)   # RGB
#: The CED figure: inches and dots per inch (so ced.png is 600 x 450 pixels).
CED_FIGSIZE = (6.0, 4.5)
CED_DPI = 100
#: Bytes per face name when names travel between processes.
NAME_BYTES = 256

OUTPUT_FILES = {"json": "results.json", "report": "report.md", "ced": "ced.png",
                "grid": "predictions.png", "per_face_csv": "per_face.csv",
                "per_face_npz": "per_face.npz"}


class EvalError(AsmnetError, ValueError):
    """Bad input to the evaluation (path, dataset, split, option); the message names it."""


# ----------------------------------------------------------------------------------------------
# The evaluation loop


@dataclasses.dataclass
class FacePredictions:
    """Per-face results of one pass over a source, in source order, padding dropped.

    Landmarks are interleaved model vectors (N, 2n) and poses (N, 3) (yaw, pitch, roll) in model
    units (radians); see :mod:`asmnet_jax.landmarks`.
    """

    landmarks: np.ndarray      # (N, 2n) float32, predicted
    gt_landmarks: np.ndarray   # (N, 2n) float32, ground truth of the evaluated crop
    pose: np.ndarray           # (N, 3) float32 radians, predicted
    gt_pose: np.ndarray        # (N, 3) float32 radians, label
    indices: np.ndarray        # (N,) int64 positions in the source
    names: List[str]           # (N,) example names

    def __len__(self) -> int:
        return int(self.indices.shape[0])

    @property
    def pose_deg(self) -> np.ndarray:
        """Predicted poses (N, 3) in degrees."""
        return lm.model_pose_to_degrees(self.pose)

    @property
    def gt_pose_deg(self) -> np.ndarray:
        """Pose labels (N, 3) in degrees."""
        return lm.model_pose_to_degrees(self.gt_pose)

    @property
    def has_pose(self) -> bool:
        """Whether every face has a finite pose label."""
        return len(self) > 0 and bool(np.isfinite(self.gt_pose).all())

    def nme(self, normaliser: str = "inter_ocular") -> np.ndarray:
        """Per-face NME (N,) as fractions (:func:`asmnet_jax.metrics.per_face_nme`)."""
        return metrics.per_face_nme(self.landmarks, self.gt_landmarks, normaliser)


def _encode_names(names, width: int = NAME_BYTES) -> np.ndarray:
    """Names (B,) -> uint8 (B, width), UTF-8, zero-padded (longer names are cut)."""
    out = np.zeros((len(names), width), np.uint8)
    for row, name in enumerate(names):
        data = str(name).encode("utf-8")[:width]
        out[row, :len(data)] = np.frombuffer(data, np.uint8)
    return out


def _decode_names(codes) -> List[str]:
    """Inverse of :func:`_encode_names`."""
    return [bytes(row).rstrip(b"\0").decode("utf-8", errors="replace")
            for row in np.asarray(codes, np.uint8)]


def predict_faces(predict, variables, source, pcfg: pipeline.PipelineConfig, mesh,
                  process_index: int = 0, process_count: int = 1) -> FacePredictions:
    """Predicts every face of ``source`` (no augmentation): the project's one evaluation loop.

    Args:
      predict: ``predict(variables, device_batch) -> {'landmarks' (B, 2n), 'pose' (B, 3)}``, from
        :func:`asmnet_jax.steps.compile_eval_step` on ``mesh``.
      variables: the model's variables, replicated on ``mesh``.
      source: random-access examples (:mod:`asmnet_jax.data.pipeline`).
      pcfg: ``batch_size`` (global, all processes), ``input_size``, ``margin``, ``num_landmarks``.
      mesh: the 1-D ``data`` mesh the batch is sharded over.
      process_index, process_count: this process of a multi-process run. Each process reads every
        ``process_count``-th record; all processes run the same number of batches (one that has
        run out feeds a fully masked copy) and all receive every face.

    Returns:
      :class:`FacePredictions` of all ``len(source)`` faces in source order. The last batch is
      padded to full size and its padding dropped through the ``mask``, so one compilation serves
      every batch.
    """
    import jax
    from jax.experimental import multihost_utils

    from asmnet_jax import steps as steps_lib

    if len(source) == 0:
        raise EvalError("the evaluation source holds no faces")
    dataset = pipeline.eval_dataset(source, pcfg, process_index, process_count)
    local = pcfg.batch_size // process_count
    num_batches = math.ceil(len(source) / pcfg.batch_size)
    sharding = steps_lib.batch_sharding(mesh)
    keys = ("landmarks", "pose", "gt_landmarks", "gt_pose", "mask", "index")
    parts: Dict[str, list] = {key: [] for key in keys}
    names: List[str] = []
    for k in range(num_batches):
        if k < len(dataset):
            batch = dataset[k]
        else:  # this process has run out of records: a fully masked copy keeps lock-step
            batch = dict(dataset[len(dataset) - 1])
            batch["mask"] = np.zeros(local, np.float32)
        out = predict(variables, pipeline.device_batch(batch, sharding))
        out = {"landmarks": out["landmarks"], "pose": out["pose"]}
        host = {"gt_landmarks": np.asarray(batch["landmarks"]),
                "gt_pose": np.asarray(batch["pose"]), "mask": np.asarray(batch["mask"]),
                # int32 travels between processes without 64-bit JAX
                "index": np.asarray(batch["index"]).astype(np.int32)}
        if process_count > 1:
            out = multihost_utils.process_allgather(out, tiled=True)
            host["name"] = _encode_names(batch["name"])
            host = multihost_utils.process_allgather(host, tiled=True)
            batch_names = _decode_names(host.pop("name"))
        else:
            out = jax.device_get(out)
            batch_names = [str(name) for name in batch["name"]]
        for key in keys:
            parts[key].append(np.asarray(out[key] if key in out else host[key]))
        names.extend(batch_names)
    arrays = {key: np.concatenate(value) for key, value in parts.items()}
    keep = np.flatnonzero(arrays.pop("mask") > 0)
    # Processes interleave records: restore the source order.
    keep = keep[np.argsort(arrays["index"][keep], kind="stable")]
    return FacePredictions(
        landmarks=arrays["landmarks"][keep], gt_landmarks=arrays["gt_landmarks"][keep],
        pose=arrays["pose"][keep], gt_pose=arrays["gt_pose"][keep],
        indices=arrays["index"][keep].astype(np.int64), names=[names[i] for i in keep])


# ----------------------------------------------------------------------------------------------
# Summaries and the report


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


def table_columns(dataset: str, splits: Sequence[str]) -> Dict[str, str]:
    """Split name -> column title, in the paper's order: 300W ``common / challenging / full``
    (:data:`asmnet_jax.metrics.COLUMNS_300W`), WFLW ``test`` and its six attribute subsets
    (:data:`asmnet_jax.metrics.COLUMNS_WFLW`; the splits are ``test_<attribute>``), then any other
    evaluated split under its own name."""
    if dataset == "w300":
        columns = dict(metrics.COLUMNS_300W)
    elif dataset == "wflw":
        columns = {(key if key == "test" else f"test_{key}"): title
                   for key, title in metrics.COLUMNS_WFLW.items()}
    else:
        columns = {}
    for split in splits:
        columns.setdefault(split, split)
    return columns


_NORMALISER_TITLES = {"inter_ocular": "inter-ocular", "inter_pupil": "inter-pupil",
                      "box": "box"}


def markdown_report(results: Mapping[str, Mapping], dataset: str, row: str,
                    threshold: float = metrics.DEFAULT_THRESHOLD,
                    notes: Sequence[str] = ()) -> str:
    """The report: paper-style tables (one row ``row``, one column per subset) of NME, failure
    rate and AUC for each normaliser, the face counts, and pose MAE per split.

    ``results``: from :func:`summarize_splits`. ``notes``: lines put under the title.
    """
    if not results:
        raise EvalError("no results to report")
    columns = table_columns(dataset, list(results))
    normalisers = list(next(iter(results.values()))["by_normaliser"])
    by_norm = {norm: {row: {split: r["by_normaliser"][norm] for split, r in results.items()}}
               for norm in normalisers}
    lines = [f"# {row} on {dataset}", ""]
    lines += [f"{note}  " for note in notes] + ([""] if notes else [])
    for norm in normalisers:
        title = _NORMALISER_TITLES.get(norm, norm)
        for metric, heading, digits in (
                ("nme", f"NME (%), {title} normaliser", 2),
                ("fr", f"Failure rate (%, NME > {threshold:g}), {title} normaliser", 2),
                ("auc", f"AUC at {threshold:g}, {title} normaliser", 4)):
            lines += [f"## {heading}", "",
                      metrics.subset_table(by_norm[norm], columns, metric, digits).rstrip(), ""]
    lines += ["## Faces", "", metrics.subset_table({row: results}, columns, "count").rstrip(), ""]
    with_pose = {split: r for split, r in results.items() if "pose_mae" in r}
    if with_pose:
        angles = (*metrics.POSE_NAMES, "mean")
        pose_rows = {split: {a: {"mae": r["pose_mae"][a]} for a in angles}
                     for split, r in with_pose.items()}
        lines += ["## Pose MAE (degrees)", "",
                  metrics.subset_table(pose_rows, angles, "mae", 2, row_title="split").rstrip(),
                  ""]
    return "\n".join(lines).rstrip("\n") + "\n"


# ----------------------------------------------------------------------------------------------
# Data


class SyntheticSplit:
    """One split of a run's synthetic faces, rendered on demand: example ``i`` is the one
    :func:`asmnet_jax.train.load_sources` renders (same seed, stored crop size and name)."""

    def __init__(self, split: str, count: int, seed: int, num_landmarks: int, input_size: int):
        from asmnet_jax import train
        from asmnet_jax.data import examples

        self._split, self._count = split, int(count)
        self._seed = examples.synthetic_seed(seed, split)
        self._store = train.synthetic_store_size(input_size)
        self._num_landmarks = lm.check_num_landmarks(num_landmarks)

    def __len__(self) -> int:
        return self._count

    def __getitem__(self, index: int):
        from asmnet_jax.data import examples

        index = int(index)
        if not 0 <= index < self._count:
            raise IndexError(f"synthetic {self._split} index {index} out of [0, {self._count})")
        return examples.synthetic_example(self._seed, index, self._store, self._num_landmarks,
                                          split=self._split)


class _Subset:
    """The examples ``indices`` of ``source``, as a source."""

    def __init__(self, source, indices):
        self._source, self._indices = source, [int(i) for i in indices]

    def __len__(self) -> int:
        return len(self._indices)

    def __getitem__(self, index: int):
        return self._source[self._indices[int(index)]]


_TFDS_NAMES = {"w300": "w300", "wflw": "wflw", "synthetic_faces": "synthetic_faces"}


def _tfds_builder(dataset: str, data_dir, tfds_config):
    from asmnet_jax.data import tfds_builders

    builder = tfds_builders.get_builder(_TFDS_NAMES[dataset], data_dir, tfds_config)
    if not builder.is_prepared():
        raise FileNotFoundError(
            f"dataset {dataset!r} (config {builder.builder_config.name!r}) is not built in "
            f"{builder.data_dir}; build it with: asmnet-build-data {dataset} --manual-dir DIR "
            "(or pass --data-dir)")
    return builder


def available_splits(dataset: str, data_dir=None, tfds_config=None) -> List[str]:
    """The splits ``dataset`` offers (for TFDS: the built ones)."""
    if dataset == "synthetic":
        return list(SYNTHETIC_SPLITS)
    if dataset not in _TFDS_NAMES:
        raise EvalError(f"unknown dataset {dataset!r}; use one of {', '.join(DATASETS)}")
    return list(_tfds_builder(dataset, data_dir, tfds_config).info.splits)


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


def open_source(dataset: str, split: str, *, config: Mapping, data_dir=None, tfds_config=None):
    """A random-access source of ``split``. ``config``: the run's config (``synthetic``,
    ``num_landmarks``, ``input_size`` for the synthetic faces)."""
    if dataset == "synthetic":
        synthetic = dict(config.get("synthetic") or {})
        if split not in SYNTHETIC_SPLITS:
            raise EvalError(f"dataset 'synthetic' has no split {split!r}; it has "
                            f"{', '.join(SYNTHETIC_SPLITS)}")
        # The test split has as many faces as the validation split (the config sets no count).
        count = synthetic.get(split, synthetic.get("validation"))
        return SyntheticSplit(split, int(count), int(synthetic.get("seed", 0)),
                              int(config["num_landmarks"]), int(config["input_size"]))
    from asmnet_jax.data import tfds_builders

    return tfds_builders.data_source(_TFDS_NAMES[dataset], split, data_dir, tfds_config)


def check_markup(source, num_landmarks: int, dataset: str, split: str) -> None:
    """Raises :class:`EvalError` if the faces of ``source`` do not have the model's point count."""
    example = source[0]
    have = int(np.shape(example["landmarks"])[0])
    if have != num_landmarks:
        raise EvalError(f"landmark-count mismatch: the model predicts {num_landmarks} points but "
                        f"dataset {dataset!r} split {split!r} has {have} points per face")


# ----------------------------------------------------------------------------------------------
# Figures and files


def plot_ced(path: str, errors: Mapping[str, np.ndarray], threshold: float,
             normaliser: str) -> str:
    """Writes the CED curves (one per split) of per-face errors (N,) (fractions) as a PNG of
    ``CED_FIGSIZE * CED_DPI`` pixels, with Matplotlib's Agg canvas (no global backend change)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=CED_FIGSIZE, dpi=CED_DPI)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    for label, nme in errors.items():
        x, fraction = metrics.ced_curve(nme, threshold, points=401)
        ax.step(100 * x, 100 * fraction, where="post",
                label=f"{label}: AUC {metrics.auc(nme, threshold):.3f}, "
                      f"FR {100 * metrics.failure_rate(nme, threshold):.1f}%")
    ax.set_xlim(0, 100 * threshold)
    ax.set_ylim(0, 100)
    ax.set_xlabel(f"NME (%, {_NORMALISER_TITLES.get(normaliser, normaliser)} normaliser)")
    ax.set_ylabel("faces with NME <= x (%)")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize="small")
    fig.tight_layout()
    fig.savefig(path)
    return path


def grid_tile_size(input_size: int) -> int:
    """Side of one face in the prediction grid: the input size, enlarged to GRID_MIN_TILE."""
    return max(int(input_size), GRID_MIN_TILE)


def draw_predictions(images, pred, gt, tile: int) -> np.ndarray:
    """Faces (K, S, S, 3) uint8 with ground truth (green) and prediction (red) drawn, resized to
    (K, tile, tile, 3). ``pred``, ``gt``: model vectors (K, 2n)."""
    import cv2

    from asmnet_jax.data.synthetic import draw_landmarks

    radius = max(1.0, tile / 128.0)
    out = []
    for image, p, g in zip(np.asarray(images, np.uint8), pred, gt):
        if image.shape[0] != tile:
            image = cv2.resize(image, (tile, tile), interpolation=cv2.INTER_LINEAR)
        image = draw_landmarks(image, lm.model_to_pixels(g, tile), GT_COLOUR, radius)
        out.append(draw_landmarks(image, lm.model_to_pixels(p, tile), PRED_COLOUR, radius))
    return np.stack(out)


def grid_selection(faces: Mapping[str, FacePredictions], nme: Mapping[str, np.ndarray],
                   count: int = GRID_FACES) -> List[Tuple[str, int]]:
    """``count`` faces (split, position) spread over the ranks of all faces' NME, best first."""
    pooled = [(float(e), split, i) for split in faces for i, e in enumerate(nme[split])]
    pooled.sort(key=lambda item: item[0])
    if not pooled or count <= 0:
        return []
    ranks = np.unique(np.round(np.linspace(0, len(pooled) - 1, min(count, len(pooled)))))
    return [(pooled[int(r)][1], pooled[int(r)][2]) for r in ranks]


def write_grid(path: str, selection, faces: Mapping[str, FacePredictions], sources,
               pcfg: pipeline.PipelineConfig) -> str:
    """The model inputs of the ``selection`` faces, drawn (:func:`draw_predictions`) and tiled in
    ``ceil(sqrt(K))`` columns (:func:`asmnet_jax.data.synthetic.image_grid`), as PNG or JPEG."""
    import cv2

    from asmnet_jax.data.synthetic import image_grid

    tile = grid_tile_size(pcfg.input_size)
    drawn = {}
    for split in dict.fromkeys(split for split, _ in selection):
        positions = [i for s, i in selection if s == split]
        indices = faces[split].indices[positions]
        batch = pipeline.eval_dataset(_Subset(sources[split], indices),
                                      dataclasses.replace(pcfg, batch_size=len(indices)))[0]
        tiles = draw_predictions(batch["image"][:len(indices)],
                                 faces[split].landmarks[positions],
                                 faces[split].gt_landmarks[positions], tile)
        drawn.update({(split, i): t for i, t in zip(positions, tiles)})
    tiles = np.stack([drawn[key] for key in selection])  # the selection's order
    grid = image_grid(tiles, columns=int(math.ceil(math.sqrt(len(tiles)))), pad=GRID_PAD)
    if not cv2.imwrite(path, cv2.cvtColor(grid, cv2.COLOR_RGB2BGR)):
        raise EvalError(f"{path}: could not write the image")
    return path


def write_per_face(csv_path: str, npz_path: str, faces: Mapping[str, FacePredictions],
                   nme: Mapping[str, Mapping[str, np.ndarray]], input_size: int) -> None:
    """Per-face CSV (NMEs in %, absolute wrapped pose errors in degrees) and NPZ (module
    docstring) of the predicted splits."""
    arrays = {"input_size": np.int64(input_size)}
    with open(csv_path, "w", newline="") as f:
        writer = csv.writer(f)
        normalisers = list(next(iter(nme.values())))
        pose_columns = [f"{a}_error_deg" for a in metrics.POSE_NAMES]
        writer.writerow(["split", "index", "name", *(f"nme_{n}_pct" for n in normalisers),
                         *pose_columns])
        for split, f_split in faces.items():
            errors = np.stack([nme[split][n] for n in normalisers], axis=1) * 100.0
            pose_err = (np.abs(metrics.wrap_degrees(f_split.pose_deg - f_split.gt_pose_deg))
                        if f_split.has_pose else None)
            for i in range(len(f_split)):
                pose_cells = [f"{v:.3f}" for v in pose_err[i]] if pose_err is not None \
                    else [""] * 3
                writer.writerow([split, int(f_split.indices[i]), f_split.names[i],
                                 *(f"{v:.4f}" for v in errors[i]), *pose_cells])
            arrays[f"{split}/names"] = np.array(f_split.names, dtype=str)
            arrays[f"{split}/index"] = f_split.indices
            arrays[f"{split}/pred"] = lm.model_to_pixels(f_split.landmarks, input_size)
            arrays[f"{split}/gt"] = lm.model_to_pixels(f_split.gt_landmarks, input_size)
            for norm in normalisers:
                arrays[f"{split}/nme_{norm}"] = nme[split][norm]
            arrays[f"{split}/pose_pred_deg"] = f_split.pose_deg
            arrays[f"{split}/pose_gt_deg"] = f_split.gt_pose_deg
    np.savez(npz_path, **arrays)


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
    from asmnet_jax import checkpoints as model_io

    if not os.path.isfile(os.path.join(path, model_io.MODEL_JSON)):
        return None
    return model_io.read_model_info(path).get("dataset")


def _data_config(loaded) -> Dict:
    """The run's config, or for a model directory the defaults with the model's markup and size."""
    if loaded.config is not None:
        return dict(loaded.config)
    from asmnet_jax.config_base import base_config

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
                        tfds_config: Optional[str] = None, normaliser: str = "inter_ocular",
                        threshold: float = metrics.DEFAULT_THRESHOLD,
                        batch_size: int = DEFAULT_BATCH_SIZE, out: Optional[str] = None,
                        which: str = "best", step: Optional[int] = None,
                        grid_faces: int = GRID_FACES, flip: bool = False) -> Dict:
    """Evaluates a model (see the module docstring) and writes the outputs; returns the JSON dict.

    ``model`` is a :class:`asmnet_jax.inference.LoadedModel`, or what
    :func:`asmnet_jax.inference.load` takes (then loaded with ``which`` and ``step``).
    ``threshold`` is a fraction of the normaliser; ``batch_size`` must be divisible by the local
    device count. ``flip`` averages every prediction with the mirrored prediction on the
    horizontally flipped crop (test-time augmentation, :func:`asmnet_jax.steps.eval_step`).
    Raises :class:`EvalError`, another :class:`asmnet_jax.errors.AsmnetError` (a model or data
    that cannot be read) or ``FileNotFoundError``, naming the path, split or option.
    """
    import jax

    from asmnet_jax import inference
    from asmnet_jax import steps as steps_lib

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
    available = available_splits(dataset, data_dir, tfds_config)
    reported, predicted = resolve_splits(splits, dataset, available)
    normalisers = _normalisers(normaliser, loaded.num_landmarks)

    sources = {}
    for split in predicted:
        sources[split] = open_source(dataset, split, config=config, data_dir=data_dir,
                                     tfds_config=tfds_config)
        if len(sources[split]) == 0:
            raise EvalError(f"dataset {dataset!r} split {split!r} holds no faces")
        check_markup(sources[split], loaded.num_landmarks, dataset, split)

    mesh = steps_lib.make_mesh(devices)
    predict = steps_lib.compile_eval_step(loaded.model, mesh, flip=flip)
    variables = steps_lib.replicate(loaded.variables, mesh)
    pcfg = pipeline.PipelineConfig(batch_size=batch_size, input_size=loaded.input_size,
                                   margin=loaded.margin, num_landmarks=loaded.num_landmarks)
    faces: Dict[str, FacePredictions] = {}
    for split in predicted:
        split_start = time.perf_counter()
        faces[split] = predict_faces(predict, variables, sources[split], pcfg, mesh)
        log.info("%s: %d faces in %.1f s", split, len(faces[split]),
                 time.perf_counter() - split_start)
    nme = {split: {norm: f.nme(norm) for norm in normalisers} for split, f in faces.items()}
    poses = {split: (f.pose_deg, f.gt_pose_deg) for split, f in faces.items() if f.has_pose}
    results = summarize_splits(nme, threshold, poses)
    results = {split: results[split] for split in reported}

    out = os.path.abspath(out or default_out_dir(loaded))
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
    report = markdown_report(results, dataset, row, threshold, notes)
    with open(files["report"], "w") as f:
        f.write(report)
    plot_ced(files["ced"], {split: _split_errors(split, nme, normalisers[0])
                            for split in reported}, threshold, normalisers[0])
    selection = grid_selection(faces, {s: nme[s][normalisers[0]] for s in faces}, grid_faces)
    if selection:
        write_grid(files["grid"], selection, faces, sources, pcfg)
    else:
        files.pop("grid")
    write_per_face(files["per_face_csv"], files["per_face_npz"], faces, nme, loaded.input_size)

    head = headline_split(results, reported)
    summary = {key: results[head][key] for key in ("nme", "fr", "auc", "count", "pose_mae")
               if key in results[head]}
    output = {**summary, "split": head, "normaliser": normalisers[0],
              "normalisers": normalisers, "threshold": float(threshold), "flip": bool(flip),
              "dataset": dataset,
              "data_dir": data_dir, "model": loaded.describe(), "splits": results,
              "predicted_splits": predicted, "out": out, "files": files,
              "wall_s": time.perf_counter() - start}
    with open(files["json"], "w") as f:
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
