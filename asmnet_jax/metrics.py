"""Evaluation metrics (docs/method.md section 6): NME, failure rate, AUC, CED, pose MAE and result
tables.

Host-side NumPy, computed in float64. Landmarks may be given as points ``(N, n, 2)`` or as the
project's interleaved vectors ``(N, 2n)`` (:mod:`asmnet_jax.landmarks`); any consistent unit works
(model units or pixels), as long as prediction and ground truth share it and the two axes share a
scale (NME is a ratio of lengths, so a uniform scale cancels, but a crop resized to a non-square
shape does not). ``n`` is 68 (300W) or 98 (WFLW).

Definitions
-----------
* NME of a face (a fraction, not %): ``mean_i ||pred_i - gt_i||_2 / d`` with ``d``:

  - ``inter_ocular``: distance between the outer eye corners of the ground truth, points 36 and 45
    (68) or 60 and 72 (98);
  - ``inter_pupil``: distance between the eye centres of the ground truth: the means of points
    36-41 and 42-47 (68), or the pupil points 96 and 97 (98; the authors' WFLW normaliser);
  - ``box``: ``sqrt(w * h)`` of the bounding box of the ground-truth landmarks.

* Failure rate at ``T``: fraction of faces with ``NME > T`` (an NME equal to ``T`` is no failure).
* CED (cumulative error distribution): ``F(x) = fraction of faces with NME <= x``, a right-
  continuous step function, so ``F(T) = 1 - failure_rate(T)``.
* AUC at ``T``: ``(1 / T) * integral_0^T F(x) dx``, in ``[0, 1]``, integrated exactly: each face
  contributes ``max(0, T - e) / T`` (the length of ``[e, T]``), so
  ``AUC = mean_faces max(0, T - e) / T``. No grid, no trapezoids.
* Pose MAE: mean over faces of ``|wrap(pred - gt)|`` per angle, in degrees, with the difference
  wrapped to ``(-180, 180]`` (179 vs -179 is 2 degrees off, not 358).

``summarize`` reports NME and FR in % (as the paper's tables do) and AUC as a fraction.
"""

from __future__ import annotations

from typing import Dict, Mapping, Optional, Sequence, Tuple, Union

import numpy as np

from asmnet_jax.landmarks import EYE_POINTS_68, INTER_OCULAR, PUPILS_98

NORMALISERS = ("inter_ocular", "inter_pupil", "box")
KNOWN_MARKUPS = (68, 98)
DEFAULT_THRESHOLD = 0.1
POSE_NAMES = ("yaw", "pitch", "roll")

#: Column keys and titles of the paper's tables (keys as in the data readers' split names).
COLUMNS_300W = {"common": "common", "challenging": "challenging", "full": "full"}
COLUMNS_WFLW = {"test": "test", "pose": "pose", "expression": "expression",
                "illumination": "illumination", "makeup": "make-up", "occlusion": "occlusion",
                "blur": "blur"}


# ----------------------------------------------------------------------------------------------
# Landmarks and NME


def as_points(landmarks, name: str = "landmarks") -> np.ndarray:
    """(N, 2n) interleaved vectors or (N, n, 2) points -> float64 points (N, n, 2).

    Only these two layouts are accepted: a 2-D array is always read as (N, 2n), so a single face
    must be given as (1, 2n) or (1, n, 2).
    """
    arr = np.asarray(landmarks, dtype=np.float64)
    if arr.ndim == 2:
        if arr.shape[1] % 2:
            raise ValueError(f"{name}: a 2-D array must be (N, 2n) interleaved [x0, y0, x1, ...] "
                             f"vectors, got shape {arr.shape} with an odd last axis")
        return arr.reshape(arr.shape[0], arr.shape[1] // 2, 2)
    if arr.ndim == 3 and arr.shape[2] == 2:
        return arr
    raise ValueError(f"{name}: expected (N, 2n) vectors or (N, n, 2) points, got shape {arr.shape}")


def _face_list(indices) -> str:
    indices = [int(i) for i in indices]
    shown = ", ".join(str(i) for i in indices[:5])
    more = f" ... ({len(indices)} faces in all)" if len(indices) > 5 else ""
    return f"face{'s' if len(indices) > 1 else ''} {shown}{more}"


def _check_finite(points: np.ndarray, name: str) -> None:
    bad = ~np.isfinite(points).all(axis=(1, 2))
    if bad.any():
        raise ValueError(f"{name} has non-finite coordinates at {_face_list(np.flatnonzero(bad))}")


def normaliser_distance(gt, normaliser: str = "inter_ocular",
                        num_landmarks: Optional[int] = None) -> np.ndarray:
    """Per-face normalising distance (N,) of ground-truth landmarks (N, n, 2) or (N, 2n).

    In the landmarks' unit. Raises ValueError for an unknown normaliser or markup, or when a face's
    distance is zero (coincident eye points, or a degenerate landmark box), naming the face index.
    """
    if normaliser not in NORMALISERS:
        raise ValueError(f"unknown normaliser {normaliser!r}; use one of {', '.join(NORMALISERS)}")
    pts = as_points(gt, "gt")
    n = _check_markup(pts.shape[1], num_landmarks)
    _check_finite(pts, "gt")
    if normaliser == "inter_ocular":
        a, b = INTER_OCULAR[n]
        dist = np.linalg.norm(pts[:, a] - pts[:, b], axis=-1)
        what = f"points {a} and {b} coincide"
    elif normaliser == "inter_pupil":
        if n == 68:
            left = pts[:, list(EYE_POINTS_68[0])].mean(axis=1)
            right = pts[:, list(EYE_POINTS_68[1])].mean(axis=1)
            what = "the centres of points 36-41 and 42-47 coincide"
        else:
            left, right = pts[:, PUPILS_98[0]], pts[:, PUPILS_98[1]]
            what = f"pupil points {PUPILS_98[0]} and {PUPILS_98[1]} coincide"
        dist = np.linalg.norm(left - right, axis=-1)
    else:
        size = pts.max(axis=1) - pts.min(axis=1)
        dist = np.sqrt(size[:, 0] * size[:, 1])
        what = "the ground-truth landmark box has zero width or height"
    zero = ~(dist > 0)
    if zero.any():
        raise ValueError(f"zero {normaliser} normaliser at {_face_list(np.flatnonzero(zero))}: "
                         f"{what}")
    return dist


def _check_markup(n: int, num_landmarks: Optional[int]) -> int:
    if num_landmarks is not None and num_landmarks != n:
        raise ValueError(f"num_landmarks={num_landmarks} but the landmarks hold {n} points")
    if n not in KNOWN_MARKUPS:
        raise ValueError(f"{n} landmarks is not a supported markup; use 68 (300W) or 98 (WFLW) "
                         "(landmarks must be (N, 2n) vectors or (N, n, 2) points)")
    return n


def per_face_nme(pred, gt, normaliser: str = "inter_ocular",
                 num_landmarks: Optional[int] = None) -> np.ndarray:
    """Normalised mean error per face, (N,) float64, as a fraction (multiply by 100 for %).

    ``pred``, ``gt``: (N, n, 2) points or (N, 2n) interleaved vectors (the two may use different
    layouts), same unit. ``n`` is inferred from the shape; ``num_landmarks``, when given, must
    agree. ``normaliser``: ``"inter_ocular"``, ``"inter_pupil"`` or ``"box"`` (module docstring),
    always measured on ``gt``. N = 0 gives an empty array.

    Raises ValueError on a shape mismatch, an unknown markup or normaliser, non-finite coordinates
    or a zero normaliser (naming the face indices).
    """
    p, g = as_points(pred, "pred"), as_points(gt, "gt")
    if p.shape != g.shape:
        raise ValueError(f"pred has {p.shape[0]} faces x {p.shape[1]} points but gt has "
                         f"{g.shape[0]} faces x {g.shape[1]} points (shapes "
                         f"{np.shape(pred)} and {np.shape(gt)})")
    _check_markup(p.shape[1], num_landmarks)
    _check_finite(p, "pred")
    dist = normaliser_distance(g, normaliser, num_landmarks)
    return np.linalg.norm(p - g, axis=-1).mean(axis=1) / dist


def full_set_nme(common_nme, challenging_nme) -> np.ndarray:
    """300W full set = common + challenging: the concatenated per-face errors (N1 + N2,).

    Face-weighted: ``mean(full_set_nme(a, b))`` is ``(sum a + sum b) / (len a + len b)``, not the
    average of the two subsets' means.
    """
    return np.concatenate([_as_errors(common_nme, allow_empty=True),
                           _as_errors(challenging_nme, allow_empty=True)])


# ----------------------------------------------------------------------------------------------
# Error distributions


def _as_errors(nme, allow_empty: bool = False) -> np.ndarray:
    e = np.asarray(nme, dtype=np.float64)
    if e.ndim != 1:
        raise ValueError(f"per-face errors must be a 1-D array (N,), got shape {e.shape}")
    if e.size == 0 and not allow_empty:
        raise ValueError("no faces: per-face errors are empty")
    bad = ~(np.isfinite(e) & (e >= 0))
    if bad.any():
        raise ValueError("per-face errors must be finite and >= 0; not at "
                         f"{_face_list(np.flatnonzero(bad))}")
    return e


def _check_threshold(threshold: float) -> float:
    t = float(threshold)
    if not (np.isfinite(t) and t > 0):
        raise ValueError(f"threshold must be a finite positive number, got {threshold!r}")
    return t


def failure_rate(nme, threshold: float = DEFAULT_THRESHOLD) -> float:
    """Fraction in [0, 1] of faces with NME > ``threshold`` (NME == threshold is no failure).

    ``nme``: per-face errors (N,), fractions as from :func:`per_face_nme`.
    """
    e, t = _as_errors(nme), _check_threshold(threshold)
    return float(np.mean(e > t))


def auc(nme, threshold: float = DEFAULT_THRESHOLD) -> float:
    """Area under the CED from 0 to ``threshold``, divided by ``threshold``: a fraction in [0, 1].

    Exact: the CED is the step function ``F(x) = #{e_i <= x} / N``, whose integral over [0, T] is
    ``sum_i max(0, T - e_i) / N``. So ``AUC = mean_i max(0, T - e_i) / T``: 1 when every error is
    0, 0 when every error is >= T. E.g. errors [0, 0.05] at T = 0.1: (0.1 + 0.05) / 2 / 0.1 = 0.75.
    """
    e, t = _as_errors(nme), _check_threshold(threshold)
    # mean of max(0, 1 - e / t): the same value, and exactly 1.0 when every error is 0
    return float(min(1.0, np.mean(np.maximum(1.0 - e / t, 0.0))))


def ced_curve(nme, threshold: float = DEFAULT_THRESHOLD,
              points: int = 101) -> Tuple[np.ndarray, np.ndarray]:
    """Cumulative error distribution sampled for plots: ``(x, fraction)``, both (points,) float64.

    ``x = linspace(0, threshold, points)``; ``fraction[k]`` = fraction of faces with NME <= x[k]
    (non-decreasing, ``fraction[-1] = 1 - failure_rate``). For the AUC use :func:`auc`, which
    integrates the step function exactly rather than this sampling.
    """
    e, t = _as_errors(nme), _check_threshold(threshold)
    if int(points) != points or points < 2:
        raise ValueError(f"points must be an integer >= 2, got {points!r}")
    x = np.linspace(0.0, t, int(points))
    fraction = np.searchsorted(np.sort(e), x, side="right") / e.size
    return x, fraction


# ----------------------------------------------------------------------------------------------
# Pose


def wrap_degrees(angle_deg) -> np.ndarray:
    """Angles in degrees wrapped to (-180, 180] (float64, same shape)."""
    a = np.asarray(angle_deg, dtype=np.float64)
    return a - 360.0 * np.ceil((a - 180.0) / 360.0)


def pose_mae(pred_deg, gt_deg) -> Dict[str, float]:
    """Mean absolute pose error in degrees: ``{"yaw", "pitch", "roll", "mean"}``.

    ``pred_deg``, ``gt_deg``: (N, 3) (yaw, pitch, roll) in degrees (convert model poses with
    :func:`asmnet_jax.landmarks.model_pose_to_degrees`). Differences are wrapped to (-180, 180]
    before the absolute value; ``mean`` is the mean of the three angles' MAEs.
    """
    p = np.asarray(pred_deg, dtype=np.float64)
    g = np.asarray(gt_deg, dtype=np.float64)
    if p.shape != g.shape or p.ndim != 2 or p.shape[1] != 3:
        raise ValueError(f"poses must both be (N, 3) (yaw, pitch, roll) in degrees, got "
                         f"{p.shape} and {g.shape}")
    if p.shape[0] == 0:
        raise ValueError("no faces: poses are empty")
    for name, arr in (("pose_pred", p), ("pose_gt", g)):
        bad = ~np.isfinite(arr).all(axis=1)
        if bad.any():
            raise ValueError(f"{name} is not finite at {_face_list(np.flatnonzero(bad))}")
    err = np.abs(wrap_degrees(p - g)).mean(axis=0)
    out = {name: float(v) for name, v in zip(POSE_NAMES, err)}
    out["mean"] = float(err.mean())
    return out


# ----------------------------------------------------------------------------------------------
# Summaries and tables


def summarize(nme, threshold: float = DEFAULT_THRESHOLD, pose_pred=None,
              pose_gt=None) -> Dict[str, object]:
    """One evaluation set's numbers.

    Returns ``count`` (faces), ``nme`` (mean NME in %), ``fr`` (failure rate in %), ``auc``
    (fraction in [0, 1]) at ``threshold``, ``threshold``, and ``pose_mae`` (dict of degrees, see
    :func:`pose_mae`) when both poses (N, 3) in degrees are given.
    """
    e = _as_errors(nme)
    out: Dict[str, object] = {
        "count": int(e.size),
        "nme": 100.0 * float(e.mean()),
        "fr": 100.0 * failure_rate(e, threshold),
        "auc": auc(e, threshold),
        "threshold": float(threshold),
    }
    if (pose_pred is None) != (pose_gt is None):
        raise ValueError("give both pose_pred and pose_gt, or neither")
    if pose_pred is not None:
        if np.shape(pose_pred)[:1] != e.shape:
            raise ValueError(f"{e.size} per-face errors but poses of shape {np.shape(pose_pred)}")
        out["pose_mae"] = pose_mae(pose_pred, pose_gt)
    return out


def _cell(summary: Optional[Mapping], metric: str, digits: int) -> str:
    if summary is None:
        return "-"
    value = summary
    for key in metric.split("."):
        if not isinstance(value, Mapping) or key not in value:
            return "-"
        value = value[key]
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    return f"{float(value):.{digits}f}"


def subset_table(results: Mapping[str, Mapping[str, Mapping]],
                 columns: Union[Mapping[str, str], Sequence[str]] = COLUMNS_300W,
                 metric: str = "nme", digits: int = 2, row_title: str = "model") -> str:
    """Markdown table laid out like the paper's: one row per model, one column per subset.

    ``results``: ``{model: {subset: summary}}`` with summaries from :func:`summarize`; rows keep
    its order. ``columns``: the subset keys in order, or a mapping key -> column title
    (:data:`COLUMNS_300W`: common / challenging / full; :data:`COLUMNS_WFLW`: test, pose,
    expression, illumination, make-up, occlusion, blur). ``metric``: a summary key (``nme``,
    ``fr``, ``auc``, ``count``) or a dotted path such as ``pose_mae.yaw``. Missing cells show
    ``-``. Returns the table as text, ending with a newline.
    """
    titles = dict(columns) if isinstance(columns, Mapping) else {c: c for c in columns}
    if not titles:
        raise ValueError("no columns")
    lines = ["| " + " | ".join([row_title, *titles.values()]) + " |",
             "|---|" + "---:|" * len(titles)]
    for model, subsets in results.items():
        cells = [_cell(subsets.get(key), metric, digits) for key in titles]
        lines.append("| " + " | ".join([str(model), *cells]) + " |")
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------------------------
# Accumulation over evaluation batches


class Accumulator:
    """Collects (pred, gt, mask[, pose]) batches of an evaluation loop, dropping padded rows.

    ``add(pred, gt, mask=None, pose_pred=None, pose_gt=None)``: landmarks (B, 2n) or (B, n, 2)
    (NumPy or JAX arrays), ``mask`` (B,) bool or 0/1, False/0 for padding rows (None keeps all),
    poses (B, 3) in degrees. Either every batch carries poses or none does. The kept landmarks are
    stored (as (k, n, 2) float64), so several normalisers can be computed afterwards.

    ``pred``, ``gt``, ``pose_pred``, ``pose_gt``: the concatenated kept rows;
    ``nme(normaliser)``: per-face errors (N,); ``summary(normaliser, threshold)``: see
    :func:`summarize`.
    """

    def __init__(self):
        self._pred, self._gt, self._pose_pred, self._pose_gt = [], [], [], []
        self._has_pose: Optional[bool] = None
        self._n: Optional[int] = None
        self.batches = 0

    def add(self, pred, gt, mask=None, pose_pred=None, pose_gt=None) -> None:
        p, g = as_points(pred, "pred"), as_points(gt, "gt")
        where = f"batch {self.batches}"
        if p.shape != g.shape:
            raise ValueError(f"{where}: pred shape {np.shape(pred)} does not match gt shape "
                             f"{np.shape(gt)}")
        if self._n is not None and p.shape[1] != self._n:
            raise ValueError(f"{where}: {p.shape[1]} landmarks, earlier batches had {self._n}")
        if mask is None:
            keep = np.ones(p.shape[0], dtype=bool)
        else:
            m = np.asarray(mask)
            if m.shape != (p.shape[0],):
                raise ValueError(f"{where}: mask must be ({p.shape[0]},), got shape {m.shape}")
            if m.dtype != bool and not np.isin(m, (0, 1)).all():
                raise ValueError(f"{where}: mask must be boolean or 0/1")
            keep = m.astype(bool)
        has_pose = pose_pred is not None or pose_gt is not None
        if has_pose and (pose_pred is None or pose_gt is None):
            raise ValueError(f"{where}: give both pose_pred and pose_gt, or neither")
        if self._has_pose is not None and has_pose != self._has_pose:
            raise ValueError(f"{where}: poses given in some batches but not in others")
        if has_pose:
            pp = np.asarray(pose_pred, dtype=np.float64)
            pg = np.asarray(pose_gt, dtype=np.float64)
            if pp.shape != (p.shape[0], 3) or pg.shape != (p.shape[0], 3):
                raise ValueError(f"{where}: poses must be ({p.shape[0]}, 3), got {pp.shape} and "
                                 f"{pg.shape}")
            self._pose_pred.append(pp[keep])
            self._pose_gt.append(pg[keep])
        self._pred.append(p[keep])
        self._gt.append(g[keep])
        self._n, self._has_pose = p.shape[1], has_pose
        self.batches += 1

    def __len__(self) -> int:
        return sum(len(x) for x in self._gt)

    def _cat(self, parts, width) -> np.ndarray:
        return np.concatenate(parts) if parts else np.zeros((0, *width))

    @property
    def pred(self) -> np.ndarray:
        """Kept predicted points (N, n, 2)."""
        return self._cat(self._pred, (self._n or 0, 2))

    @property
    def gt(self) -> np.ndarray:
        """Kept ground-truth points (N, n, 2)."""
        return self._cat(self._gt, (self._n or 0, 2))

    @property
    def pose_pred(self) -> Optional[np.ndarray]:
        """Kept predicted poses (N, 3) in degrees, or None when no batch had poses."""
        return self._cat(self._pose_pred, (3,)) if self._has_pose else None

    @property
    def pose_gt(self) -> Optional[np.ndarray]:
        """Kept ground-truth poses (N, 3) in degrees, or None when no batch had poses."""
        return self._cat(self._pose_gt, (3,)) if self._has_pose else None

    def nme(self, normaliser: str = "inter_ocular") -> np.ndarray:
        """Per-face NME (N,) of the kept rows, as a fraction."""
        if self._n is None:
            raise ValueError("no batches were added")
        return per_face_nme(self.pred, self.gt, normaliser)

    def summary(self, normaliser: str = "inter_ocular",
                threshold: float = DEFAULT_THRESHOLD) -> Dict[str, object]:
        """:func:`summarize` of the kept rows (``pose_mae`` too when poses were added)."""
        return summarize(self.nme(normaliser), threshold, self.pose_pred, self.pose_gt)
