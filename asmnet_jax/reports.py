"""What ``asmnet-eval`` writes besides its JSON: the paper-style markdown tables, the cumulative
error distribution plot, the grid of predicted faces and the per-face files.

The numbers come from :mod:`asmnet_jax.evaluate` (per-split summaries) and the faces from
:class:`asmnet_jax.evaluation.EvalSet`; nothing here predicts or computes a metric beyond
what a figure needs.
"""

from __future__ import annotations

import csv
import math
from typing import Dict, List, Mapping, Sequence, Tuple

import cv2
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from asmnet_jax import landmarks as lm
from asmnet_jax import metrics
from asmnet_jax.data import augment, crop
from asmnet_jax.data.synthetic import draw_landmarks, image_grid
from asmnet_jax.errors import EvalError
from asmnet_jax.evaluation import FacePredictions
from asmnet_jax.files import atomic_open, temporary_path

GRID_FACES = 16
GRID_MIN_TILE = 128
GRID_PAD = 2
GT_COLOUR = (0, 200, 0)       # RGB
PRED_COLOUR = (255, 40, 40)   # RGB
#: The CED figure: inches and dots per inch (so ced.png is 600 x 450 pixels).
CED_FIGSIZE = (6.0, 4.5)
CED_DPI = 100
#: Bytes per face name when names travel between processes.


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


def plot_ced(path: str, errors: Mapping[str, np.ndarray], threshold: float,
             normaliser: str) -> str:
    """Writes the CED curves (one per split) of per-face errors (N,) (fractions) as a PNG of
    ``CED_FIGSIZE * CED_DPI`` pixels, with Matplotlib's Agg canvas (no global backend change)."""

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
    with temporary_path(path) as temporary:
        fig.savefig(temporary)
    return path


def grid_tile_size(input_size: int) -> int:
    """Side of one face in the prediction grid: the input size, enlarged to GRID_MIN_TILE."""
    return max(int(input_size), GRID_MIN_TILE)


def draw_predictions(images, pred, gt, tile: int) -> np.ndarray:
    """Faces (K, S, S, 3) uint8 with ground truth (green) and prediction (red) drawn, resized to
    (K, tile, tile, 3). ``pred``, ``gt``: model vectors (K, 2n)."""

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


def write_grid(path: str, selection, faces: Mapping[str, FacePredictions], arrays,
               input_size: int, margin: float) -> str:
    """The model inputs of the ``selection`` faces, drawn (:func:`draw_predictions`) and tiled in
    ``ceil(sqrt(K))`` columns (:func:`asmnet_jax.data.synthetic.image_grid`), as PNG or JPEG.
    ``arrays``: each split's :class:`asmnet_jax.data.sources.HostArrays`."""
    tile = grid_tile_size(input_size)
    drawn = {}
    for split in dict.fromkeys(split for split, _ in selection):
        positions = [i for s, i in selection if s == split]
        stored = arrays[split]
        images = np.stack([augment.eval_transform(
            stored.image[i], stored.landmarks[i], stored.pose[i],
            crop.base_matrix(stored.box[i], margin, input_size), input_size)[0]
            for i in faces[split].indices[positions]])
        tiles = draw_predictions(images, faces[split].landmarks[positions],
                                 faces[split].gt_landmarks[positions], tile)
        drawn.update({(split, i): t for i, t in zip(positions, tiles)})
    tiles = np.stack([drawn[key] for key in selection])  # the selection's order
    grid = image_grid(tiles, columns=int(math.ceil(math.sqrt(len(tiles)))), pad=GRID_PAD)
    with temporary_path(path) as temporary:
        written = cv2.imwrite(temporary, cv2.cvtColor(grid, cv2.COLOR_RGB2BGR))
    if not written:
        raise EvalError(f"{path}: could not write the image")
    return path


def write_per_face(csv_path: str, npz_path: str, faces: Mapping[str, FacePredictions],
                   nme: Mapping[str, Mapping[str, np.ndarray]], input_size: int) -> None:
    """Per-face CSV (NMEs in %, absolute wrapped pose errors in degrees) and NPZ (module
    docstring) of the predicted splits."""
    arrays = {"input_size": np.int64(input_size)}
    with atomic_open(csv_path, newline="") as f:
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
    with temporary_path(npz_path) as temporary:
        np.savez(temporary, **arrays)
