"""How well the shape-plausibility score (``ShapeModel.plausibility`` of a model's prediction)
separates face crops from non-face crops, and good fits from bad ones, as ROC AUC (issue 26).

    python -m experiments.plausibility_auc --arrays-dir /work/npz \\
        [--photos ../shared/data/300w_subset/afw ...] [--model asmnet-300w]

1. Faces vs non-faces. Positives: the split's faces (``--arrays-dir``/DATASET/SPLIT.npz, written
   by ``asmnet-build-data --npz``) in their base crops. Negatives: background patches of the
   original photos of those faces when ``--photos`` folders are given (300W layout: images beside
   ``.pts`` files, searched recursively; a face ``afw/NAME_1`` is found as ``.../afw/NAME_1.pts``):
   square boxes of the side of a face box of the photo, wholly inside the photo with the model's
   margin, IoU < ``--max-iou`` with every annotated face of the photo, ``--patches`` per photo.
   Without photos (and always, as a second, weaker row): patches of the stored crops themselves,
   which hold little background, so those are smaller (0.4 of the face box side, IoU < 0.1 and at
   most 20 % of the patch on the face box): the crops' corners. Every patch is framed like a face
   box (``crop.base_matrix`` with the model's margin).
2. Good vs bad fits, on the same faces: the clean base crops ("good") against the faces under
   heavy occlusion (one rectangle of uniform noise or grey covering 30-50 % of the face box),
   a box shifted by 25-40 % of its side, and a box scaled by 0.6 and by 1.6 (each a "bad" set;
   parts of a box outside the stored crop are black). Also, over all those crops, fits with an
   inter-ocular NME above ``--nme-threshold`` against the rest.

Scores: the prediction's ``score`` (the positive class, face / good, should score higher); also
``-residual`` and ``-mahalanobis`` alone. ROC AUC by ``sklearn.metrics.roc_auc_score`` when
scikit-learn is installed, else :func:`roc_auc` (Mann-Whitney, ties counted half). Prints a table
and, last, one JSON line; writes both to ``--out`` (.json) and its .md.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

if __name__ == "__main__" and not __package__:  # run as a file: the imports below would fail
    raise SystemExit("run it from the repository root as: python -m experiments.plausibility_auc")

from experiments import common

DEFAULT_OUT = os.path.join(common.ROOT, "experiments", "results", "plausibility_auc.json")
SCORES = ("score", "neg_residual", "neg_mahalanobis")
BAD_KINDS = ("occluded", "shifted", "scaled_0.6", "scaled_1.6")
#: Background patch sides, as fractions of a face box side, tried in turn (the first that fits).
SIDE_FRACTIONS = (1.0, 0.8, 0.6, 0.5, 0.4)
#: The largest fraction of a background patch on a face box (besides IoU < --max-iou).
MAX_COVER = 0.2
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
FACE_INDEX = re.compile(r"_\d+$")


# ---------------------------------------------------------------------------------------------
# ROC AUC


def roc_auc(positive, negative) -> float:
    """P(a positive scores above a negative), ties counting one half (the Mann-Whitney U
    statistic over the product of the counts): the area under the ROC curve. NaN if a class is
    empty."""
    pos = np.asarray(positive, np.float64).ravel()
    neg = np.asarray(negative, np.float64).ravel()
    if len(pos) == 0 or len(neg) == 0:
        return float("nan")
    values = np.concatenate([pos, neg])
    order = np.argsort(values, kind="mergesort")
    ranks = np.empty(len(values), np.float64)
    ranks[order] = np.arange(1, len(values) + 1)
    # Average ranks over ties.
    sorted_values = values[order]
    starts = np.flatnonzero(np.r_[True, sorted_values[1:] != sorted_values[:-1]])
    ends = np.r_[starts[1:], len(values)]
    for start, end in zip(starts, ends):
        if end - start > 1:
            ranks[order[start:end]] = (start + 1 + end) / 2.0
    u = ranks[:len(pos)].sum() - len(pos) * (len(pos) + 1) / 2.0
    return float(u / (len(pos) * len(neg)))


def auc(positive, negative) -> float:
    """ROC AUC of ``positive`` against ``negative`` scores: scikit-learn's when installed, else
    :func:`roc_auc` (the same number)."""
    pos = np.asarray(positive, np.float64).ravel()
    neg = np.asarray(negative, np.float64).ravel()
    if len(pos) == 0 or len(neg) == 0:
        return float("nan")
    try:
        from sklearn.metrics import roc_auc_score
    except ImportError:
        return roc_auc(pos, neg)
    labels = np.r_[np.ones(len(pos)), np.zeros(len(neg))]
    return float(roc_auc_score(labels, np.r_[pos, neg]))


def auc_backend() -> str:
    try:
        import sklearn.metrics  # noqa: F401
    except ImportError:
        return "rank (scikit-learn not installed)"
    return "sklearn.metrics.roc_auc_score"


# ---------------------------------------------------------------------------------------------
# Boxes and crops


def iou(a, b) -> float:
    """IoU of two square boxes (cx, cy, side)."""
    ax, ay, aside = (float(v) for v in a)
    bx, by, bside = (float(v) for v in b)
    w = min(ax + aside / 2, bx + bside / 2) - max(ax - aside / 2, bx - bside / 2)
    h = min(ay + aside / 2, by + bside / 2) - max(ay - aside / 2, by - bside / 2)
    inter = max(w, 0.0) * max(h, 0.0)
    return inter / (aside ** 2 + bside ** 2 - inter)


def covered(patch, face) -> float:
    """The fraction of square box ``patch`` that lies on ``face``."""
    px, py, pside = (float(v) for v in patch)
    fx, fy, fside = (float(v) for v in face)
    w = min(px + pside / 2, fx + fside / 2) - max(px - pside / 2, fx - fside / 2)
    h = min(py + pside / 2, fy + fside / 2) - max(py - pside / 2, fy - fside / 2)
    return max(w, 0.0) * max(h, 0.0) / pside ** 2


def sample_patches(rng, image_shape, faces, side: float, count: int, margin: float,
                   max_iou: float, max_cover: float = 1.0, tries: int = 500) -> List[Tuple]:
    """Up to ``count`` square boxes (cx, cy, side) whose grown box (``margin``) lies inside an
    image of ``image_shape``, with IoU < ``max_iou`` and covered fraction <= ``max_cover``
    against every box of ``faces``."""
    from asmnet_jax.data import crop

    h, w = image_shape[:2]
    half = crop.grown_side(side, margin) / 2
    if 2 * half > min(w, h):
        return []
    out: List[Tuple] = []
    for _ in range(tries):
        if len(out) == count:
            break
        box = (float(rng.uniform(half - 0.5, w - 0.5 - half)),
               float(rng.uniform(half - 0.5, h - 0.5 - half)), float(side))
        if all(iou(box, f) < max_iou and covered(box, f) <= max_cover for f in faces):
            out.append(box)
    return out


def background_patches(rng, image_shape, faces, sides, count: int, margin: float,
                       max_iou: float) -> List[Tuple[Tuple, float]]:
    """Up to ``count`` background patches of an image holding face boxes ``faces``: [(box,
    side fraction)]. Each takes the side of a random face box of ``sides`` times the first
    fraction of :data:`SIDE_FRACTIONS` at which one fits (:func:`sample_patches`, at most
    :data:`MAX_COVER` of it on a face box): the whole side where the image has room, smaller
    where it is a face crop with little background."""
    out = []
    for _ in range(count):
        side = float(sides[int(rng.integers(len(sides)))])
        for fraction in SIDE_FRACTIONS:
            found = sample_patches(rng, image_shape, faces, fraction * side, 1, margin, max_iou,
                                   MAX_COVER)
            if found:
                out.append((found[0], fraction))
                break
    return out


def frame(image, box, margin: float, size: int, landmarks=None):
    """``image`` cropped to the model input by face box ``box`` (cx, cy, side): (crop (S, S, 3)
    uint8, the landmarks in crop pixels or None)."""
    from asmnet_jax.data import augment, crop

    points = np.zeros((1, 2), np.float32) if landmarks is None else landmarks
    out, mapped, _, _ = augment.eval_transform(image, points, np.zeros(3, np.float32),
                                               crop.base_matrix(box, margin, size), size)
    return out, (None if landmarks is None else mapped)


def occlude_box(image, box, rng, area_range=(0.3, 0.5)) -> Tuple[np.ndarray, float]:
    """A copy of ``image`` with one rectangle over ``area_range`` of the face box ``box`` (aspect
    1:2 to 2:1, inside the box), uniform noise or mid grey (even odds); and the area fraction."""
    out = image.copy()
    cx, cy, side = (float(v) for v in box)
    fraction = float(rng.uniform(*area_range))
    aspect = float(np.exp(rng.uniform(np.log(0.5), np.log(2.0))))
    rw = min(side, side * np.sqrt(fraction * aspect))
    rh = min(side, side * fraction / (rw / side))
    x0 = cx - side / 2 + rng.uniform(0, side - rw)
    y0 = cy - side / 2 + rng.uniform(0, side - rh)
    h, w = image.shape[:2]
    xa, xb = int(np.clip(round(x0 + 0.5), 0, w)), int(np.clip(round(x0 + rw + 0.5), 0, w))
    ya, yb = int(np.clip(round(y0 + 0.5), 0, h)), int(np.clip(round(y0 + rh + 0.5), 0, h))
    if rng.random() < 0.5:
        out[ya:yb, xa:xb] = rng.integers(0, 256, (yb - ya, xb - xa, 3), dtype=np.uint8)
    else:
        out[ya:yb, xa:xb] = 128
    return out, (xb - xa) * (yb - ya) / side ** 2


def shifted_box(box, rng, range_=(0.25, 0.4)):
    cx, cy, side = (float(v) for v in box)
    angle = rng.uniform(0, 2 * np.pi)
    distance = rng.uniform(*range_) * side
    return (cx + distance * np.cos(angle), cy + distance * np.sin(angle), side)


# ---------------------------------------------------------------------------------------------
# Photos


def _stem_paths(folders: Sequence[str]) -> Dict[str, str]:
    """{absolute path without extension: image path} of every image beside a .pts file."""
    found = {}
    for folder in folders:
        if not os.path.isdir(folder):
            raise SystemExit(f"--photos {folder}: no such directory")
        for root, _, files in os.walk(os.path.abspath(folder)):
            names = set(files)
            for name in sorted(files):
                stem, ext = os.path.splitext(name)
                if ext.lower() != ".pts":
                    continue
                image = next((stem + e for e in (s for x in IMAGE_SUFFIXES for s in (x, x.upper()))
                              if stem + e in names), None)
                if image is not None:
                    found[os.path.join(root, stem)] = os.path.join(root, image)
    return found


def _same_file(a: str, b: str) -> bool:
    if os.path.getsize(a) != os.path.getsize(b):
        return False
    with open(a, "rb") as fa, open(b, "rb") as fb:
        return fa.read() == fb.read()


def photo_faces(folders: Sequence[str], names: Sequence[str], all_photos: bool = False
                ) -> List[Dict]:
    """The images under ``folders`` of the faces ``names`` (``subset/stem``), or every image with
    ``all_photos``: [{'image': path, 'faces': [box ...], 'split_faces': count}], sorted. An
    image's faces are its own .pts and those of the other faces of its photo (AFW's and HELEN's
    ``NAME_1``, ``NAME_2``) whose image file is the same (official 300W keeps one copy of the
    whole photo per face; a face-centred subset keeps different crops, each with one face)."""
    from asmnet_jax.data import crop, w300

    stems = _stem_paths(folders)
    groups: Dict[str, List[str]] = {}
    for stem in stems:
        parent, base = os.path.split(stem)
        # AFW and HELEN name a photo's faces NAME_1, NAME_2 (LFPW's image_0001 has no index).
        key = os.path.join(parent, FACE_INDEX.sub("", base)) if base[:1].isdigit() else stem
        groups.setdefault(key, []).append(stem)
    wanted = ["/" + name.strip("/") for name in names]
    photos, seen = [], set()
    for stem in sorted(stems):
        if stem in seen:
            continue
        if not all_photos and not any(stem.replace(os.sep, "/").endswith(n) for n in wanted):
            continue
        parent, base = os.path.split(stem)
        key = os.path.join(parent, FACE_INDEX.sub("", base)) if base[:1].isdigit() else stem
        members = [m for m in sorted(groups[key])
                   if m == stem or _same_file(stems[m], stems[stem])]
        seen.update(members)
        in_split = sum(any(m.replace(os.sep, "/").endswith(n) for n in wanted) for m in members)
        boxes = [tuple(crop.landmark_box(w300.read_pts(m + ".pts"), 0.0)) for m in members]
        photos.append({"image": stems[stem], "faces": boxes, "split_faces": in_split})
    return photos


# ---------------------------------------------------------------------------------------------
# The measurement


def make_scorer(loaded, batch_size: int):
    """``score(crops (N, S, S, 3) uint8) -> (landmarks (N, 2n), {'score', 'neg_residual',
    'neg_mahalanobis'} (N,))``, in fixed-size batches (one compilation)."""
    from asmnet_jax.inference import make_predictor

    predict = make_predictor(loaded)
    shape_model = loaded.shape_model

    def score(crops):
        crops = np.asarray(crops, np.uint8)
        outs = []
        for start in range(0, len(crops), batch_size):
            chunk = crops[start:start + batch_size]
            pad = batch_size - len(chunk)
            if pad:
                chunk = np.concatenate([chunk, np.repeat(chunk[-1:], pad, axis=0)])
            outs.append(predict(chunk)[0][:batch_size - pad])
        landmarks = np.concatenate(outs) if outs else np.zeros((0, shape_model.dim), np.float32)
        p = {k: np.asarray(v, np.float64) for k, v in shape_model.plausibility(landmarks).items()}
        return landmarks, {"score": p["score"], "neg_residual": -p["residual"],
                           "neg_mahalanobis": -p["mahalanobis"]}

    return score


def _aucs(pos: Dict[str, np.ndarray], neg: Dict[str, np.ndarray]) -> Dict[str, float]:
    return {k: auc(pos[k], neg[k]) for k in SCORES}


def _row(name, pos, neg, count_pos, count_neg, extra=None) -> Dict:
    row = {"comparison": name, "positives": int(count_pos), "negatives": int(count_neg),
           "auc": _aucs(pos, neg)}
    row.update(extra or {})
    return row


def _summary(values) -> Dict[str, float]:
    v = np.asarray(values, np.float64)
    return {"mean": float(v.mean()) if len(v) else float("nan"),
            "median": float(np.median(v)) if len(v) else float("nan")}


def measure(loaded, arrays, photos: Optional[List[Dict]], seed: int, patches: int,
            max_iou: float, nme_threshold: float, batch_size: int, say=print) -> Dict:
    """All the comparisons for ``arrays`` (HostArrays) and ``loaded`` (with a calibrated shape
    model): {'faces_vs_nonfaces': [row], 'good_vs_bad': [row], 'nme': {...}, 'counts': {...}}."""
    from asmnet_jax import landmarks as lm
    from asmnet_jax.data import w300
    from asmnet_jax.metrics import per_face_nme

    size, margin = loaded.input_size, loaded.margin
    rng = np.random.default_rng(seed)
    score = make_scorer(loaded, batch_size)
    n = len(arrays)

    # Clean base crops, and the perturbed faces (one of each kind per face).
    crops = {kind: [] for kind in ("clean",) + BAD_KINDS}
    truth = {kind: [] for kind in crops}
    occluded_fraction = []
    for i in range(n):
        image, points, box = arrays.image[i], arrays.landmarks[i], arrays.box[i]
        variants = {"clean": (image, box)}
        occluded, fraction = occlude_box(image, box, rng)
        occluded_fraction.append(fraction)
        variants["occluded"] = (occluded, box)
        variants["shifted"] = (image, shifted_box(box, rng))
        variants["scaled_0.6"] = (image, (box[0], box[1], 0.6 * box[2]))
        variants["scaled_1.6"] = (image, (box[0], box[1], 1.6 * box[2]))
        for kind, (img, b) in variants.items():
            out, mapped = frame(img, b, margin, size, points)
            crops[kind].append(out)
            truth[kind].append(lm.pixels_to_model(mapped, size))
    say(f"scoring {n} faces x {len(crops)} framings ...")
    results = {}
    for kind in crops:
        pred, scores = score(np.stack(crops[kind]))
        nme = per_face_nme(pred, np.stack(truth[kind]))
        results[kind] = {"scores": scores, "nme": nme}

    # Background patches of the stored crops (always), and of the photos (with --photos).
    crop_neg, crop_fractions = [], []
    for i in range(n):
        box = tuple(float(v) for v in arrays.box[i])
        for patch, fraction in background_patches(rng, arrays.image[i].shape, [box], [box[2]],
                                                  patches, margin, max_iou):
            crop_neg.append(frame(arrays.image[i], patch, margin, size)[0])
            crop_fractions.append(fraction)
    photo_neg, photo_fractions, photos_used, photo_scores = [], [], 0, None
    for photo in photos or []:
        image = w300.load_image(photo["image"])
        found = background_patches(rng, image.shape, photo["faces"],
                                   [f[2] for f in photo["faces"]], patches, margin, max_iou)
        photos_used += bool(found)
        photo_neg += [frame(image, patch, margin, size)[0] for patch, _ in found]
        photo_fractions += [fraction for _, fraction in found]

    clean = results["clean"]["scores"]
    faces_rows = []
    if photos is not None:
        say(f"scoring {len(photo_neg)} photo background patches ({photos_used} photos) ...")
        photo_scores = (score(np.stack(photo_neg))[1] if photo_neg
                        else {k: np.zeros(0) for k in SCORES})
        faces_rows.append(_row("faces vs photo background", clean, photo_scores, n,
                               len(photo_neg),
                               {"photos": len(photos), "photos_with_patches": photos_used,
                                "split_faces_in_photos": int(sum(p["split_faces"]
                                                                 for p in photos)),
                                "patch_side_fraction": _summary(photo_fractions)}))
    say(f"scoring {len(crop_neg)} stored-crop background patches ...")
    crop_scores = score(np.stack(crop_neg))[1] if crop_neg else {k: np.zeros(0) for k in SCORES}
    faces_rows.append(_row("faces vs stored-crop background", clean, crop_scores, n,
                           len(crop_neg), {"patch_side_fraction": _summary(crop_fractions)}))

    fit_rows = []
    for kind in BAD_KINDS:
        extra = {"bad_nme_median": float(np.median(results[kind]["nme"]))}
        if kind == "occluded":
            extra["occluded_fraction_mean"] = float(np.mean(occluded_fraction))
        fit_rows.append(_row(f"clean vs {kind}", clean, results[kind]["scores"], n, n, extra))
    pooled = {k: np.concatenate([results[kind]["scores"][k] for kind in BAD_KINDS])
              for k in SCORES}
    fit_rows.append(_row("clean vs all perturbed", clean, pooled, n, n * len(BAD_KINDS)))

    # Good / bad by the prediction's own NME, over every framing.
    all_scores = {k: np.concatenate([results[kind]["scores"][k] for kind in crops])
                  for k in SCORES}
    all_nme = np.concatenate([results[kind]["nme"] for kind in crops])
    good = all_nme <= nme_threshold
    nme_row = _row(f"NME <= {100 * nme_threshold:g} % vs above",
                   {k: v[good] for k, v in all_scores.items()},
                   {k: v[~good] for k, v in all_scores.items()}, good.sum(), (~good).sum(),
                   {"threshold": nme_threshold,
                    "bad_by_framing": {kind: int((results[kind]["nme"] > nme_threshold).sum())
                                       for kind in crops}})
    fit_rows.append(nme_row)
    clean_nme = results["clean"]["nme"]
    clean_good = clean_nme <= nme_threshold
    fit_rows.append(_row(f"clean only: NME <= {100 * nme_threshold:g} % vs above",
                         {k: v[clean_good] for k, v in clean.items()},
                         {k: v[~clean_good] for k, v in clean.items()},
                         clean_good.sum(), (~clean_good).sum()))
    return {"faces_vs_nonfaces": faces_rows, "good_vs_bad": fit_rows,
            "score_summary": {
                "faces": _summary(clean["score"]),
                "photo_background": _summary(photo_scores["score"]) if photos is not None
                else None,
                "crop_background": _summary(crop_scores["score"]),
                **{kind: _summary(results[kind]["scores"]["score"]) for kind in BAD_KINDS}},
            "nme_percent_median": {kind: float(100 * np.median(results[kind]["nme"]))
                                   for kind in crops}}


def _fmt(value) -> str:
    return "  nan" if value != value else f"{value:.3f}"


def table(result: Dict) -> str:
    lines = ["| comparison | pos | neg | AUC score | AUC -residual | AUC -mahalanobis |",
             "|---|---:|---:|---:|---:|---:|"]
    for row in result["faces_vs_nonfaces"] + result["good_vs_bad"]:
        a = row["auc"]
        lines.append(f"| {row['comparison']} | {row['positives']} | {row['negatives']} | "
                     f"{_fmt(a['score'])} | {_fmt(a['neg_residual'])} | "
                     f"{_fmt(a['neg_mahalanobis'])} |")
    return "\n".join(lines)


def _backend() -> str:
    import jax

    return f"JAX {jax.default_backend()}"


def _finite(value):
    """``value`` with NaN floats as None (strict JSON) and NumPy scalars as Python numbers."""
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    if isinstance(value, (float, np.floating)):
        return None if value != value else float(value)
    if isinstance(value, np.integer):
        return int(value)
    return value


def parse_args(argv=None):
    parser = argparse.ArgumentParser(prog="python -m experiments.plausibility_auc",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--arrays-dir", required=True,
                        help="directory of the .npz exports (DATASET/SPLIT.npz)")
    parser.add_argument("--dataset", default="w300", help="(default %(default)s)")
    parser.add_argument("--split", default="validation", help="(default %(default)s)")
    parser.add_argument("--model", default="asmnet-300w",
                        help="model directory, run or shipped name (default %(default)s)")
    parser.add_argument("--photos", nargs="+", default=None,
                        help="folders of the split's original photos (images + .pts, 300W "
                             "layout) for background patches")
    parser.add_argument("--all-photos", action="store_true",
                        help="take patches from every photo under --photos, not only those of "
                             "the split's faces")
    parser.add_argument("--patches", type=int, default=4,
                        help="background patches per photo / stored crop (default %(default)s)")
    parser.add_argument("--max-iou", type=float, default=0.1,
                        help="a patch's largest IoU with a face box (default %(default)s)")
    parser.add_argument("--nme-threshold", type=float, default=0.08,
                        help="NME (fraction) above which a fit is bad (default %(default)s)")
    parser.add_argument("--limit", type=int, default=0, help="use the first N faces only")
    parser.add_argument("--batch-size", type=int, default=32, help="(default %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="(default %(default)s)")
    parser.add_argument("--out", default=DEFAULT_OUT,
                        help="JSON result file; the table goes beside it as .md "
                             "(default experiments/results/plausibility_auc.json)")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    start = time.time()
    from asmnet_jax import inference
    from asmnet_jax.data import sources

    loaded = inference.load(args.model)
    if loaded.shape_model is None or not loaded.shape_model.calibrated:
        raise SystemExit(f"--model {args.model}: no calibrated shape model (asm.npz)")
    path = sources.npz_path(args.arrays_dir, args.dataset, args.split)
    arrays = sources.load_npz(path, loaded.num_landmarks)
    if args.limit:
        arrays = sources.HostArrays(*(getattr(arrays, f)[:args.limit]
                                      for f in ("image", "landmarks", "pose", "box", "name")))
    photos = None
    if args.photos:
        photos = photo_faces(args.photos, [str(x) for x in arrays.name], args.all_photos)
        common.say(f"{len(photos)} photos under {' '.join(args.photos)}")
    result = measure(loaded, arrays, photos, args.seed, args.patches, args.max_iou,
                     args.nme_threshold, args.batch_size, common.say)
    text = table(result)
    summary = {
        "model": args.model, "model_path": loaded.path, "input_size": loaded.input_size,
        "margin": loaded.margin, "data": path, "faces": len(arrays),
        "photos": args.photos, "seed": args.seed, "patches": args.patches,
        "max_iou": args.max_iou, "auc_backend": auc_backend(),
        "command": " ".join(common.command_line()),
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": f"{_backend()}, {os.cpu_count()} CPU cores",
        **result, "wall_s": round(time.time() - start, 1)}
    out = os.path.abspath(args.out)
    os.makedirs(os.path.dirname(out), exist_ok=True)
    common.write_json(out, _finite(summary))
    md = os.path.splitext(out)[0] + ".md"
    header = (f"# Shape-plausibility score: ROC AUC\n\n`{summary['command']}`\n\n"
              f"Model {args.model} ({loaded.input_size} px, margin {loaded.margin}), "
              f"{len(arrays)} faces of {path}, seed {args.seed}, AUC by "
              f"{summary['auc_backend']}, {summary['wall_s']} s on {summary['machine']}, "
              f"{summary['date']}.\n\n")
    common.write_text(md, header + text + "\n")
    print(text)
    print(json.dumps(_finite(summary)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
