"""Re-measures the face detectors' box calibrations (``SHORT_CALIBRATION``, ``FULL_CALIBRATION``
and ``HAAR_CALIBRATION`` in ``asmnet_jax/detection.py``) on the shared 300W subset.

    python -m experiments.calibrate_detectors [--data ../shared/data/300w_subset]
        [--folders afw helen/trainset] [--detectors blazeface-short blazeface-full haar]
        [--seed 0] [--limit N]

The shipped constants were measured with the defaults: AFW + HELEN train, 1,207 faces (add
``lfpw/trainset`` to ``--folders`` for the 805 LFPW faces too). Every ``.pts`` file is one face;
its image is the file of the same name ending in ``.jpg`` or ``.png``. The subset's photos are
already crops around their one annotated face (the landmark box centred, about 55 % of the photo's
longer side); a photo where the box is under 40 % (a whole photo, as in the full 300W) is first
cropped to the square where it is 55 %. Each face gives two samples: the crop as it is (landmark
box ~224 px) and the crop shrunk onto a grey 1024 x 768 canvas at a random place (``--seed``) so
the landmark box is 20 % of the canvas width (~205 px). For each available detector,
``detection.measure_calibration`` gives the median (scale, dx, dy) over the faces found, their
interquartile ranges and the median IoU with the landmark box before -> after calibration; the
table sets them beside the constant shipped in ``detection.py``. The last output line is JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import cv2
import numpy as np

from asmnet_jax import detection
from asmnet_jax.data import crop
from asmnet_jax.data.w300 import read_pts
from asmnet_jax.errors import AsmnetError
from asmnet_jax.predict import read_image

PROG = "calibrate_detectors"
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_DATA = os.path.join(ROOT, "..", "shared", "data", "300w_subset")
DETECTORS = ["blazeface-short", "blazeface-full", "haar"]
CANVAS = (1024, 768)        # width, height
CANVAS_FRACTION = 0.2       # landmark box side / canvas width
CROP_FRACTION = 0.55        # landmark box side / crop side, for whole photos
WHOLE_PHOTO_BELOW = 0.4     # a photo whose landmark box is less of its longer side is cropped
GREY = 128


def list_faces(data: str, folders) -> list:
    """(image path, .pts path) of every annotated face in ``data/FOLDER`` for each folder, sorted
    by folder then name; ValueError naming the folder when one is missing or has none."""
    faces = []
    for folder in folders:
        where = os.path.join(data, folder)
        if not os.path.isdir(where):
            raise ValueError(f"{where}: no such folder")
        found = []
        for name in sorted(os.listdir(where)):
            stem, ext = os.path.splitext(name)
            images = [os.path.join(where, stem + e) for e in (".jpg", ".png")]
            images = [p for p in images if os.path.isfile(p)]
            if ext.lower() == ".pts" and images:
                found.append((images[0], os.path.join(where, name)))
        if not found:
            raise ValueError(f"{where}: no .jpg/.png images with a .pts file of the same name")
        faces += found
    return faces


def face_crop(image, points):
    """The photo as it is when its landmark box is at least 40 % of its longer side, otherwise
    the square around the face where the box is 55 % (clipped to the photo); points moved too."""
    box = crop.landmark_box(points, 0.0)
    if box.side >= WHOLE_PHOTO_BELOW * max(image.shape[:2]):
        return image, points
    half = box.side / CROP_FRACTION / 2
    x0, y0 = (max(0, int(round(c - half))) for c in (box.cx, box.cy))
    x1, y1 = int(round(box.cx + half)), int(round(box.cy + half))
    return image[y0:y1, x0:x1], points - np.array([x0, y0], np.float32)


def on_canvas(image, points, rng):
    """``image`` shrunk (or grown) so the landmark box is 20 % of the canvas width, pasted at a
    random place of a grey 1024 x 768 canvas (clipped if it is larger); points moved too."""
    (width, height), (h, w) = CANVAS, image.shape[:2]
    factor = CANVAS_FRACTION * width / crop.landmark_box(points, 0.0).side
    new_w, new_h = max(1, int(round(w * factor))), max(1, int(round(h * factor)))
    small = cv2.resize(image, (new_w, new_h),
                       interpolation=cv2.INTER_AREA if factor < 1 else cv2.INTER_LINEAR)
    ox = int(rng.integers(min(0, width - new_w), max(0, width - new_w) + 1))
    oy = int(rng.integers(min(0, height - new_h), max(0, height - new_h) + 1))
    canvas = np.full((height, width, 3), GREY, np.uint8)
    x0, y0, x1, y1 = max(ox, 0), max(oy, 0), min(ox + new_w, width), min(oy + new_h, height)
    canvas[y0:y1, x0:x1] = small[y0 - oy:y1 - oy, x0 - ox:x1 - ox]
    # Pixel centres at integers: x -> (x + 0.5) * new_w / w - 0.5 in the resized image.
    scale = np.array([new_w / w, new_h / h])
    return canvas, ((points + 0.5) * scale - 0.5 + [ox, oy]).astype(np.float32)


def samples(faces, seed: int):
    """Two (image, landmarks) samples per face: the crop, then the crop on the canvas. The same
    seed gives the same canvases, so every detector sees the same images."""
    rng = np.random.default_rng(seed)
    for image_path, pts_path in faces:
        image, points = face_crop(read_image(image_path), read_pts(pts_path))
        yield image, points
        yield on_canvas(image, points, rng)


def _triple(values) -> str:
    return "(" + ", ".join(f"{v:.4f}" for v in values) + ")"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n")[0])
    parser.add_argument("--data", default=DEFAULT_DATA, help="the 300W subset folder")
    parser.add_argument("--folders", nargs="+", default=["afw", "helen/trainset"])
    parser.add_argument("--detectors", nargs="+", default=DETECTORS,
                        choices=sorted(detection.DETECTORS))
    parser.add_argument("--seed", type=int, default=0, help="places on the canvas")
    parser.add_argument("--limit", type=int, default=None, help="only the first N faces")
    args = parser.parse_args(argv)
    if args.limit is not None and args.limit < 1:
        parser.error(f"--limit must be at least 1, got {args.limit}")
    data = os.path.normpath(args.data)
    try:
        if not os.path.isdir(data):
            raise ValueError(f"--data {data}: no such folder")
        faces = list_faces(data, args.folders)[:args.limit]
    except ValueError as error:
        print(f"{PROG}: error: {error}", file=sys.stderr)
        return 2
    print(f"{len(faces)} faces from {', '.join(args.folders)} in {data}; "
          f"{2 * len(faces)} samples (crop + {CANVAS[0]} x {CANVAS[1]} canvas, seed {args.seed})")
    start, results, rows = time.perf_counter(), {}, []
    for name in args.detectors:
        spec = detection.DETECTORS[name]
        shipped = [spec.calibration.scale, spec.calibration.dx, spec.calibration.dy]
        reason = spec.unavailable()
        if reason is not None:
            print(f"{name}: skipped: {reason}")
            results[name] = {"skipped": reason}
            continue
        began = time.perf_counter()
        try:
            report = detection.measure_calibration(spec.build(None), samples(faces, args.seed))
        except AsmnetError as error:
            print(f"{PROG}: error: {error}", file=sys.stderr)
            return 1
        result = {"faces": report["faces"], "detected": report["detected"], "shipped": shipped,
                  "seconds": round(time.perf_counter() - began, 1)}
        if report["calibration"] is not None:
            c = report["calibration"]
            median = [c.scale, c.dx, c.dy]
            result.update(median=median, iqr=report["iqr"], iou_before=report["iou_before"],
                          iou_after=report["iou_after"],
                          difference=[m - s for m, s in zip(median, shipped)])
            rows.append((name, f"{report['detected']} / {report['faces']}", _triple(median),
                         _triple(report["iqr"]),
                         f"{report['iou_before']:.2f} -> {report['iou_after']:.2f}",
                         _triple(shipped), _triple(result["difference"])))
        else:
            rows.append((name, f"0 / {report['faces']}", "-", "-", "-", _triple(shipped), "-"))
        results[name] = result
        print(f"{name}: {report['detected']} / {report['faces']} found in {result['seconds']} s",
              flush=True)
    header = ("detector", "found", "median (scale, dx, dy)", "IQR", "IoU before -> after",
              "shipped in detection.py", "median - shipped")
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    for row in [header, tuple("-" * w for w in widths), *rows]:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip())
    print(json.dumps({"data": data, "folders": args.folders, "faces": len(faces),
                      "samples": 2 * len(faces), "seed": args.seed, "detectors": results,
                      "opencv": cv2.__version__,
                      "wall_s": round(time.perf_counter() - start, 1)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
