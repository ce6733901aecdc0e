"""README figure: ``asmnet-predict`` with its default (shipped) model on a real public-domain photo.

    pip install scikit-image
    python -m experiments.make_photo_figure --out docs/predict_astronaut.jpg

The photo is scikit-image's ``astronaut`` (Eileen Collins, NASA, public domain). It is written to
a temporary folder and given to ``asmnet-predict`` exactly as a user would (face detector, crop,
model, drawing); the figure is the drawing beside an enlarged view of the first face. Prints
a JSON line with the number of faces and their (yaw, pitch, roll) in degrees.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import sys
import tempfile

import cv2
import numpy as np


def _enlarged(image, box, size):
    """The square around ``box`` [x0, y0, x1, y1] grown by half, scaled to ``size`` pixels."""
    x0, y0, x1, y1 = box
    cx, cy, half = (x0 + x1) / 2, (y0 + y1) / 2, 0.75 * max(x1 - x0, y1 - y0)
    h, w = image.shape[:2]
    left, top = int(max(0, cx - half)), int(max(0, cy - half))
    right, bottom = int(min(w, cx + half)), int(min(h, cy + half))
    return cv2.resize(image[top:bottom, left:right], (size, size),
                      interpolation=cv2.INTER_CUBIC)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default=os.path.join("docs", "predict_astronaut.jpg"))
    parser.add_argument("--model", default=None, help="asmnet-predict --model (default: its own)")
    parser.add_argument("--flip", action="store_true", help="asmnet-predict --flip")
    args = parser.parse_args(argv)
    from skimage import data

    from asmnet_jax.cli import predict

    with tempfile.TemporaryDirectory() as tmp:
        photo = os.path.join(tmp, "astronaut.png")
        cv2.imwrite(photo, cv2.cvtColor(data.astronaut(), cv2.COLOR_RGB2BGR))
        argv = [photo, "--out", os.path.join(tmp, "out")]
        argv += ["--model", args.model] if args.model else []
        argv += ["--flip"] if args.flip else []
        stdout = io.StringIO()
        with contextlib.redirect_stdout(stdout):
            code = predict.main(argv)
        if code:
            return code
        summary = json.loads(stdout.getvalue().strip().splitlines()[-1])
        drawing = cv2.imread(summary["drawings"][0])
        with open(os.path.join(tmp, "out", "predictions.json")) as f:
            faces = json.load(f)["images"][0]["faces"]
    figure = drawing
    if faces:
        figure = np.concatenate([drawing, _enlarged(drawing, faces[0]["face_box"],
                                                    drawing.shape[0])], axis=1)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    cv2.imwrite(args.out, figure, [cv2.IMWRITE_JPEG_QUALITY, 88])
    print(json.dumps({"out": args.out, "faces": len(faces),
                      "pose_deg": [[f["yaw"], f["pitch"], f["roll"]] for f in faces]}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
