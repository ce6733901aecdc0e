"""README figures: augmented training crops of real 300W faces and of synthetic faces, with their
landmarks drawn, exactly as the training pipeline produces them.

    python -m experiments.make_figures --w300 ../shared/data/300w_subset --out docs
"""

from __future__ import annotations

import argparse
import os

import cv2
import numpy as np

from asmnet_jax import landmarks as lm
from asmnet_jax.data import examples, pipeline, splits, synthetic, w300
from asmnet_jax.data.sources import InMemorySource

SIZE = 160


def augmented_grid(source, count, seed, columns):
    config = pipeline.PipelineConfig(batch_size=count, input_size=SIZE, seed=seed)
    batch = pipeline.train_dataset(source, config)[0]
    tiles = [synthetic.draw_landmarks(image.copy(), lm.model_to_pixels(points, SIZE), radius=1.3)
             for image, points in zip(batch["image"], batch["landmarks"])]
    return synthetic.image_grid(tiles, columns)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--w300", default=os.path.join("..", "shared", "data", "300w_subset"))
    parser.add_argument("--out", default="docs")
    parser.add_argument("--count", type=int, default=12)
    args = parser.parse_args()
    os.makedirs(args.out, exist_ok=True)

    faces = w300.read_300w(args.w300, "train").records[:: 97][:args.count]
    real = InMemorySource(
        examples.make_example(splits.load_image(f.image_path), f.landmarks, np.zeros(3), f.name)
        for f in faces)
    fake = InMemorySource(examples.synthetic_example(0, i) for i in range(args.count))
    rows = [augmented_grid(real, args.count, 1, 6), augmented_grid(fake, args.count, 2, 6)]
    figure = np.concatenate(rows, axis=0)
    path = os.path.join(args.out, "augmented_faces.jpg")
    cv2.imwrite(path, figure[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, 85])
    print(path, figure.shape)


if __name__ == "__main__":
    main()
