"""Where "frontal" is: the head-pose frame of the project's 3D template against published 68-point
3D mean faces (docs/pose.md).

    python -m experiments.pose_frame [--shared-data ../shared/data] [--distance 10]

The pose labels are PnP fits of the project's template (:mod:`asmnet_jax.data.face3d`), so pose
(0, 0, 0) is whatever orientation that template has. This script measures how far that is from the
zero pose of a published mean face, three ways:

1. **Similarity alignment** (Umeyama: scale, rotation, translation; least squares over the points)
   of the published face onto the template, over all 68 points, without the jaw line (0-16, which
   differs most between models) and over the labeller's rigid points only. The rotation is turned
   into (yaw, pitch, roll) with :func:`asmnet_jax.data.pose.euler_angles`: the pose, in the
   project's convention, at which the template looks like the published face at its zero pose.
   The residual is the RMS point distance after alignment in units of the template's outer
   inter-ocular distance.
2. **Face-plane normals**: the normal of the plane fitted to the eye corners (36, 39, 42, 45) and
   the mouth corners (48, 54), as (yaw, pitch) in each model's own frame; the difference (published
   minus template) is the frame difference measured on this anatomical direction only.
3. **The labeller itself**: the published face, at its zero pose, projected by the project's
   pinhole camera and labelled by :func:`asmnet_jax.data.pose.pose_from_landmarks` (rigid points,
   as the data builders do, and all points).

Two more rows per face: the label a labeller using that face as its template gives the face's own
mirror image (the flip augmentation assumes 0; :func:`mirror_label`), and the project's labels of
the face turned by known angles, brought back to the face's own zero (:func:`turned_labels`: the
label's scale, not only its zero, depends on the template's shape).

Before that it checks the sign convention with the project's own functions: the template turned
by +20 degrees of yaw, pitch and roll in turn, projected and labelled; where the nose tip moves.

Published faces: ``experiments/data/openface_mean_face_68.csv`` (OpenFace's PDM mean shape;
source and licence in experiments/data/README.md), converted to the project's axes with
``diag(1, -1, -1)``; and, when the shared reference data is present, SPIGA's mean face
(``<shared>/reference/mean_face_3d_68.csv``, already in the project's axes; read there, never
copied). The last output line is JSON.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import sys
from typing import Dict, Optional, Sequence

import numpy as np

if __name__ == "__main__" and not __package__:  # run as a file: the imports below would fail
    raise SystemExit("run it from the repository root as: python -m experiments.pose_frame ...")

from experiments.common import ROOT

#: Published mean faces kept in this repository (numbers only; see experiments/data/README.md).
DATA_DIR = os.path.join(ROOT, "experiments", "data")
OPENFACE_CSV = os.path.join(DATA_DIR, "openface_mean_face_68.csv")

#: OpenCV camera axes (x right, y down, z away from the viewer) -> the project's template axes
#: (x right, y up, z toward the viewer): a 180-degree rotation about x, so no mirroring.
CAMERA_TO_PROJECT = np.diag([1.0, -1.0, -1.0])

NOSE_TIP = 30
#: Outer eye corners (iBUG 68): the inter-ocular distance used as the unit.
OUTER_EYE_CORNERS = (36, 45)
#: Eye corners and mouth corners: the points of the face plane.
FACE_PLANE = (36, 39, 42, 45, 48, 54)
JAW = tuple(range(17))


def read_points_csv(path) -> np.ndarray:
    """A 68-point CSV ``index,x,y,z`` (``#`` comment lines and one ``index,x,y,z`` header line
    allowed) -> (68, 3) float64 as written. Raises ValueError naming the file and line for a bad
    row, a missing or repeated index, or a non-finite value."""
    points = np.full((68, 3), np.nan)
    seen = set()
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            text = line.strip()
            if not text or text.startswith("#") or text.replace(" ", "").lower() == "index,x,y,z":
                continue
            cells = [cell.strip() for cell in text.split(",")]
            try:
                if len(cells) != 4:
                    raise ValueError(f"expected 4 columns index,x,y,z, got {len(cells)}")
                index = int(cells[0])
                values = [float(cell) for cell in cells[1:]]
                if not 0 <= index < 68:
                    raise ValueError(f"index {index} outside 0-67")
                if index in seen:
                    raise ValueError(f"index {index} repeated")
                if not all(math.isfinite(v) for v in values):
                    raise ValueError("non-finite coordinate")
            except ValueError as error:
                raise ValueError(f"{path}:{number}: {error}") from None
            seen.add(index)
            points[index] = values
    if len(seen) != 68:
        missing = sorted(set(range(68)) - seen)
        raise ValueError(f"{path}: {len(seen)} points, missing indices {missing[:10]}")
    return points


def normalise(points) -> np.ndarray:
    """Points (68, 3) moved so the nose tip is the origin and scaled so the outer eye corners are
    1 apart (the template's units)."""
    p = np.asarray(points, np.float64)
    a, b = OUTER_EYE_CORNERS
    return (p - p[NOSE_TIP]) / np.linalg.norm(p[a] - p[b])


def openface_face(path: str = OPENFACE_CSV) -> np.ndarray:
    """OpenFace's mean face (68, 3) in the project's axes, nose tip at the origin, inter-ocular
    units."""
    return normalise(read_points_csv(path) @ CAMERA_TO_PROJECT.T)


def spiga_face(shared_data) -> Optional[np.ndarray]:
    """SPIGA's mean face from ``<shared_data>/reference/mean_face_3d_68.csv`` (already in the
    project's axes), normalised; None when the file is absent."""
    if shared_data is None:
        return None
    path = os.path.join(os.fspath(shared_data), "reference", "mean_face_3d_68.csv")
    if not os.path.exists(path):
        return None
    return normalise(read_points_csv(path))


@dataclasses.dataclass
class Alignment:
    """``scale * rotation @ p + translation`` maps source points onto the target."""
    scale: float
    rotation: np.ndarray
    translation: np.ndarray
    rms: float  # RMS distance after alignment, target units


def similarity_align(source, target) -> Alignment:
    """Least-squares similarity transform (Umeyama 1991) of ``source`` (n, 3) onto ``target``
    (n, 3), with a proper rotation (det +1: a mirrored source is not flipped back)."""
    src = np.asarray(source, np.float64)
    dst = np.asarray(target, np.float64)
    ms, md = src.mean(0), dst.mean(0)
    a, b = src - ms, dst - md
    u, s, vt = np.linalg.svd(b.T @ a)
    d = np.diag([1.0, 1.0, np.sign(np.linalg.det(u @ vt))])
    rotation = u @ d @ vt
    scale = float(np.trace(np.diag(s) @ d) / np.sum(a * a))
    translation = md - scale * rotation @ ms
    residual = src @ (scale * rotation).T + translation - dst
    rms = float(np.sqrt(np.mean(np.sum(residual ** 2, axis=1))))
    return Alignment(scale, rotation, translation, rms)


def frame_difference(published, template=None, indices: Optional[Sequence[int]] = None) -> Dict:
    """The zero pose of ``published`` (68, 3; the project's axes) in the project's convention.

    Aligns ``published`` onto ``template`` (default: the project's 68-point template) over
    ``indices`` (default all 68) and returns ``yaw``, ``pitch``, ``roll`` (degrees): the pose at
    which the template looks like the published face at its zero pose, i.e. the label the
    project would give a face that is frontal by the published model (``R = rotation.T``);
    ``rms_iod``, the RMS residual in units of the template's outer inter-ocular distance; and
    ``rotation``, the (3, 3) rotation from the published frame into the template frame.
    """
    from asmnet_jax.data import face3d, pose

    t = face3d.mean_face(68) if template is None else np.asarray(template, np.float64)
    p = np.asarray(published, np.float64)
    idx = np.arange(68) if indices is None else np.asarray(indices)
    fit = similarity_align(p[idx], t[idx])
    yaw, pitch, roll = pose.euler_angles(fit.rotation.T)
    a, b = OUTER_EYE_CORNERS
    return dict(yaw=float(yaw), pitch=float(pitch), roll=float(roll),
                rms_iod=fit.rms / float(np.linalg.norm(t[a] - t[b])), rotation=fit.rotation)


def face_plane_normal(points, indices: Sequence[int] = FACE_PLANE) -> np.ndarray:
    """Unit normal (3,) of the least-squares plane through ``points[indices]``, turned toward +z
    (the viewer)."""
    p = np.asarray(points, np.float64)[list(indices)]
    normal = np.linalg.svd(p - p.mean(0))[2][2]
    return normal if normal[2] > 0 else -normal


def direction_angles(vector) -> np.ndarray:
    """(yaw, pitch) degrees of the head pose whose forward axis (the template's +z) points along
    ``vector`` (project axes): ``Ry(yaw) Rx(-pitch) (0, 0, 1) = (sin yaw cos pitch, sin pitch,
    cos yaw cos pitch)``."""
    v = np.asarray(vector, np.float64)
    v = v / np.linalg.norm(v)
    return np.degrees([math.atan2(v[0], v[2]), math.asin(float(np.clip(v[1], -1.0, 1.0)))])


def labeller_pose(points, rigid_only: bool = True, distance: float = 10.0,
                  image_size: int = 256) -> np.ndarray:
    """The project's PnP label (yaw, pitch, roll degrees) of ``points`` (68, 3; project axes,
    inter-ocular units) seen unrotated, nose tip on the optical axis ``distance`` units away, by
    the labeller's default camera for an ``image_size`` square image."""
    from asmnet_jax.data import pose

    camera = pose.camera_matrix(image_size)
    uv, _ = pose.project(points, np.eye(3), [0.0, 0.0, distance], camera)
    return pose.pose_from_landmarks(uv, image_size, 68, rigid_only=rigid_only)


#: Turns (yaw, pitch, roll) for :func:`turned_labels`.
TURNS = {"yaw+25": (25.0, 0.0, 0.0), "yaw+45": (45.0, 0.0, 0.0), "pitch+15": (0.0, 15.0, 0.0),
         "pitch-15": (0.0, -15.0, 0.0)}


def turned_labels(points, distance: float = 10.0, image_size: int = 256) -> Dict:
    """The project's labels of ``points`` (68, 3) turned by each of :data:`TURNS`, each brought to
    the face's own zero (``euler_angles(R(label) @ R(zero).T)``, with ``zero`` the label of the
    unturned face). A face of the template's shape gets the turn back exactly; a different shape
    shows how the label's scale, not only its zero, depends on the template."""
    from asmnet_jax.data import pose

    zero = pose.rotation_matrix(*labeller_pose(points, distance=distance, image_size=image_size))
    camera = pose.camera_matrix(image_size)
    out = {}
    for name, turn in TURNS.items():
        uv, _ = pose.project(points, pose.rotation_matrix(*turn), [0.0, 0.0, distance], camera)
        label = pose.pose_from_landmarks(uv, image_size, 68)
        out[name] = np.round(pose.euler_angles(pose.rotation_matrix(*label) @ zero.T), 3).tolist()
    return out


def mirror_label(points, rigid_only: bool = True, distance: float = 10.0,
                 image_size: int = 256) -> np.ndarray:
    """What a labeller using ``points`` (68, 3) as its template says of the mirror image of
    ``points`` at zero pose: (yaw, pitch, roll) degrees. The flip augmentation (yaw, roll ->
    -yaw, -roll) assumes 0, which holds exactly for a mirror-symmetric template like the
    project's; an asymmetric template labels a face and its mirror image inconsistently."""
    import cv2

    from asmnet_jax.data import face3d, pose
    from asmnet_jax.landmarks import FLIP_ORDERS

    model = np.asarray(points, np.float64)
    mirrored = model[FLIP_ORDERS[68]] * np.array([-1.0, 1.0, 1.0])
    camera = pose.camera_matrix(image_size)
    uv, _ = pose.project(mirrored, np.eye(3), [0.0, 0.0, distance], camera)
    idx = face3d.rigid_indices(68) if rigid_only else np.arange(68)
    obj, img = np.ascontiguousarray(model[idx]), np.ascontiguousarray(uv[idx])
    _, rvec, tvec = cv2.solvePnP(obj, img, camera, None, flags=cv2.SOLVEPNP_EPNP)
    rvec, tvec = cv2.solvePnPRefineLM(obj, img, camera, np.zeros(5), rvec, tvec)
    return pose.euler_angles(pose.CAMERA_FLIP @ cv2.Rodrigues(rvec)[0])


def convention_check(distance: float = 10.0, image_size: int = 256, degrees: float = 20.0):
    """Rows (name, angles, nose-tip shift in pixels (dx right, dy down) relative to the eye-corner
    centre, compared with the frontal face, and the labeller's output) for the template turned by
    +``degrees`` of yaw, pitch and roll in turn."""
    from asmnet_jax.data import face3d, pose

    template = face3d.mean_face(68)
    camera = pose.camera_matrix(image_size)

    def seen(angles):
        uv, _ = pose.project(template, pose.rotation_matrix(*angles), [0.0, 0.0, distance], camera)
        return uv

    def nose_offset(uv):
        return uv[NOSE_TIP] - uv[[36, 39, 42, 45]].mean(0)

    frontal = nose_offset(seen((0.0, 0.0, 0.0)))
    rows = []
    for k, name in enumerate(("yaw", "pitch", "roll")):
        angles = [0.0, 0.0, 0.0]
        angles[k] = degrees
        uv = seen(angles)
        eye_line = uv[45] - uv[36]
        rows.append(dict(name=name, angles=angles, nose_shift=(nose_offset(uv) - frontal).tolist(),
                         eye_line_deg=math.degrees(math.atan2(eye_line[1], eye_line[0])),
                         label=pose.pose_from_landmarks(uv, image_size, 68).tolist()))
    return rows


def compare(published, distance: float = 10.0) -> Dict:
    """All the figures for one published face (68, 3; project axes, normalised)."""
    from asmnet_jax.data import face3d

    template = face3d.mean_face(68)
    subsets = {"all68": None, "no_jaw": np.arange(17, 68), "rigid": face3d.rigid_indices(68)}
    out = {}
    for name, idx in subsets.items():
        diff = frame_difference(published, template, idx)
        out[name] = {k: round(diff[k], 3) for k in ("yaw", "pitch", "roll")}
        out[name]["rms_iod"] = round(diff["rms_iod"], 4)
    normal_t = direction_angles(face_plane_normal(template))
    normal_p = direction_angles(face_plane_normal(published))
    out["plane_normal"] = dict(template=np.round(normal_t, 3).tolist(),
                               published=np.round(normal_p, 3).tolist(),
                               yaw=round(float(normal_p[0] - normal_t[0]), 3),
                               pitch=round(float(normal_p[1] - normal_t[1]), 3))
    for rigid in (True, False):
        label = labeller_pose(published, rigid_only=rigid, distance=distance)
        out["labeller_rigid" if rigid else "labeller_all"] = dict(
            zip(("yaw", "pitch", "roll"), np.round(label, 3).tolist()))
    mirror = mirror_label(published, distance=distance)
    out["mirror_label_rigid"] = dict(zip(("yaw", "pitch", "roll"), np.round(mirror, 3).tolist()))
    out["turned"] = turned_labels(published, distance=distance)
    return out


def _default_shared():
    env = os.environ.get("ASMNET_SHARED_DATA")
    return env if env else os.path.join(os.path.dirname(ROOT), "shared", "data")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="pose_frame", description=__doc__.split("\n\n")[0])
    parser.add_argument("--shared-data", default=_default_shared(),
                        help="shared reference data (for SPIGA's mean face; skipped if absent)")
    parser.add_argument("--distance", type=float, default=10.0,
                        help="camera distance for the labeller checks, inter-ocular units")
    args = parser.parse_args(argv)

    from asmnet_jax.data import face3d

    print(f"Sign convention: the template turned by +20 degrees, seen {args.distance:g} "
          "inter-ocular units away by a 256 px camera (focal 256 px)")
    print(f"{'turn':<7} {'nose tip vs eye centre, px':>27} {'eye line, deg':>14}   "
          "labeller (yaw, pitch, roll)")
    for row in convention_check(args.distance):
        dx, dy = row["nose_shift"]
        label = ", ".join(f"{v:+.2f}" for v in row["label"])
        print(f"+{row['name']:<6} {'dx %+6.2f  dy %+6.2f' % (dx, dy):>27} "
              f"{row['eye_line_deg']:+14.2f}   ({label})")
    print("(shift from the frontal view; dx + is right, dy + is down the image; the eye line "
          "angle\n+ is clockwise on screen)\n")

    faces = {}
    if os.path.exists(OPENFACE_CSV):
        faces["openface"] = openface_face()
    else:
        print(f"(OpenFace's mean face not found at {OPENFACE_CSV}: skipped)\n")
    spiga = spiga_face(args.shared_data)
    if spiga is not None:
        faces["spiga"] = spiga
    else:
        print(f"(SPIGA's mean face not found under {args.shared_data}: skipped)\n")
    faces["design_frame"] = face3d.mean_face(68, design_frame=True)

    results = {name: compare(points, args.distance) for name, points in faces.items()}
    print("Zero pose of each mean face as the project labels it, degrees (+yaw: toward the image "
          "right,\n+pitch: chin up, +roll: clockwise on screen). design_frame: the project's own "
          "template before\nits 4-degree chin-down turn, as a check of the method. Last row of "
          "each face: what a labeller\nusing that face as its template says of the face's own "
          "mirror image (the flip augmentation\nassumes 0).")
    header = f"{'face':<13} {'method':<32} {'yaw':>7} {'pitch':>7} {'roll':>7} {'RMS/IOD':>8}"
    print(header)
    print("-" * len(header))
    labels = {"all68": "3D similarity, all 68 points", "no_jaw": "3D similarity, no jaw (17-67)",
              "rigid": "3D similarity, rigid points",
              "plane_normal": "eye/mouth-corner plane normal",
              "labeller_rigid": "PnP labeller, rigid points",
              "labeller_all": "PnP labeller, all points",
              "mirror_label_rigid": "its own mirror image, as template"}
    for name, res in results.items():
        for key, text in labels.items():
            r = res[key]
            roll = f"{r['roll']:7.2f}" if "roll" in r else f"{'-':>7}"
            rms = f"{r['rms_iod']:8.4f}" if "rms_iod" in r else f"{'-':>8}"
            print(f"{name:<13} {text:<32} {r['yaw']:7.2f} {r['pitch']:7.2f} {roll} {rms}")
        normal = res["plane_normal"]
        print(f"{'':<13} (plane normal (yaw, pitch) in its own frame: {name} "
              f"{normal['published']},\n{'':<14}template {normal['template']})")
    print()
    print("The same faces turned away from their own zero pose, labelled by the project and "
          "brought back to\nthat zero (rigid points; a face of the template's own shape gets the "
          "turn back exactly):")
    print(f"{'(y, p, r)':<13} " + " ".join(f"{name:>20}" for name in TURNS))
    for name, res in results.items():
        cells = [", ".join(f"{v:.1f}" for v in res["turned"][key]) for key in TURNS]
        print(f"{name:<13} " + " ".join(f"{cell:>20}" for cell in cells))
    print()
    print(json.dumps({"command": "python -m experiments.pose_frame", "distance": args.distance,
                      **results}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
