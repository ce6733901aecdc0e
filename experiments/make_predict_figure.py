"""README figure: asmnet-predict on a scene of synthetic faces (real photos cannot be committed).

    python -m experiments.make_predict_figure --model runs/default --out docs/predict_example.jpg

Six synthetic faces (:mod:`asmnet_jax.data.synthetic`) with head poses spread over yaw, pitch and
roll are tiled into one "group photo". The faces are found by the detector (``--detector``, default
as asmnet-predict; ``none`` uses the true landmark boxes instead), then cropped, predicted and drawn
exactly as ``asmnet-predict`` does (:mod:`asmnet_jax.predict`): landmarks in green, the head's
axes x red, y green, z blue. Under each face: the predicted and the true (yaw, pitch, roll) in
degrees.
"""

from __future__ import annotations

import argparse
import os
import sys

import cv2
import numpy as np

from asmnet_jax import inference
from asmnet_jax import detection, drawing
from asmnet_jax import predict as P
from asmnet_jax.data import crop, synthetic

#: (yaw, pitch, roll) degrees of the six faces, left to right, top to bottom.
POSES = [(-40, 5, 0), (0, 0, 0), (35, 10, 5), (5, 22, -15), (20, -15, 20), (-25, -10, -10)]


def render_scene(seed: int, tile: int, columns: int = 3):
    """The scene (H, W, 3) uint8 RGB and the true faces: a list of (landmarks (68, 2) pixels,
    pose (3,) degrees) in scene coordinates."""
    rng = np.random.default_rng(seed)
    tiles, truth = [], []
    for i, pose in enumerate(POSES):
        record = synthetic.render_face(rng, size=tile, pose=pose,
                                       face_fraction=float(rng.uniform(0.38, 0.5)))
        row, column = divmod(i, columns)
        offset = np.array([column * tile, row * tile], np.float32)
        tiles.append(record["image"])
        truth.append((record["landmarks"] + offset, np.asarray(pose, np.float32)))
    return synthetic.image_grid(np.stack(tiles), columns, pad=0), truth


def _label(image, text, origin, scale):
    (w, h), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)
    x, y = int(origin[0]), int(origin[1])
    cv2.rectangle(image, (x - 3, y - h - 4), (x + w + 3, y + base + 2), (0, 0, 0), -1)
    cv2.putText(image, text, (x, y), cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 255), 1,
                cv2.LINE_AA)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default=os.path.join("runs", "default"),
                        help="anything asmnet-predict --model takes (default runs/default)")
    parser.add_argument("--which", choices=("best", "latest"), default="best")
    parser.add_argument("--out", default=os.path.join("docs", "predict_example.jpg"))
    parser.add_argument("--detector", default="auto",
                        help="as asmnet-predict's; none: the true landmark boxes are given")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--tile", type=int, default=320, help="side of each face's tile, pixels")
    args = parser.parse_args(argv)

    try:
        loaded = inference.load(args.model, which=args.which)
        scene, truth = render_scene(args.seed, args.tile)
        source = P.ImageInput("scene.png", "scene.png")
        boxes, detect, calibration = {}, None, detection.GIVEN_BOXES
        if args.detector == "none":
            corners = [crop.landmark_box(points, 0.0) for points, _ in truth]
            boxes[source.path] = [[b.cx - b.side / 2, b.cy - b.side / 2, b.cx + b.side / 2,
                                   b.cy + b.side / 2] for b in corners]
        else:
            spec = detection.choose_detector(args.detector)
            detect, calibration = spec.build(None), spec.calibration
    except (P.PredictError, ValueError, FileNotFoundError) as error:
        print(f"make_predict_figure: error: {error}", file=sys.stderr)
        return 1
    predict = inference.make_predictor(loaded)
    [result] = P.predict_images([source], predict, loaded.input_size, loaded.margin,
                                batch_size=8, boxes=boxes, detect=detect,
                                calibration=calibration, read={source.path: scene}.get)

    figure = drawing.draw_faces(scene, result.faces)
    scale = args.tile / 640
    for face in result.faces:
        centre = face["landmarks"].mean(axis=0)
        column, row = int(centre[0] // args.tile), int(centre[1] // args.tile)
        index = row * 3 + column
        text = "pred " + " ".join(f"{v:+.0f}" for v in face["pose"])
        if 0 <= index < len(truth):
            text += "  true " + " ".join(f"{v:+.0f}" for v in truth[index][1])
        _label(figure, text, (column * args.tile + 8, (row + 1) * args.tile - 10), scale)
    _label(figure, "yaw pitch roll (degrees)", (8, 22), scale)

    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    cv2.imwrite(args.out, figure[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, 88])
    print(f"{args.out}: {len(result.faces)} of {len(truth)} faces, model {loaded.path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
