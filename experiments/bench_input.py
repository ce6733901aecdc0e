"""Input-pipeline throughput: augmented face crops per second per CPU core.

Builds (once) the TFDS ``w300`` dataset from a 300W folder, then times the training pipeline
(array_record read + JPEG decode + one affine warp + colour, blur, occlusion and noise
augmentation + batching) in this process on one core, and with worker processes.

    python -m experiments.bench_input --manual-dir ../shared/data/300w_subset [--size 224]

The last output line is JSON with ``img_per_s_per_core`` (single process, OpenCV on one thread).
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time

import cv2

from asmnet_jax.data import pipeline, tfds_builders


def throughput(dataset, batches: int, num_workers: int) -> float:
    iterator = pipeline.iterate(dataset, start=0, num_workers=num_workers)
    next(iterator)  # start-up (workers, first reads) is not timed
    start = time.perf_counter()
    images = 0
    for _ in range(batches):
        images += len(next(iterator)["mask"])
    return images / (time.perf_counter() - start)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--manual-dir", default=os.path.join("..", "shared", "data", "300w_subset"))
    parser.add_argument("--data-dir", default=os.path.join(tempfile.gettempdir(), "asmnet_tfds"))
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--batches", type=int, default=40)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args()

    tfds_builders.build("w300", manual_dir=args.manual_dir, data_dir=args.data_dir)
    source = tfds_builders.data_source("w300", "train", data_dir=args.data_dir)
    config = pipeline.PipelineConfig(batch_size=args.batch, input_size=args.size, seed=0)
    dataset = pipeline.train_dataset(source, config)

    cv2.setNumThreads(1)
    single = throughput(dataset, args.batches, num_workers=0)
    print(f"1 process, OpenCV 1 thread: {single:.0f} img/s (per core)", flush=True)
    multi = throughput(dataset, args.batches, num_workers=args.workers)
    print(f"{args.workers} worker processes: {multi:.0f} img/s "
          f"({multi / args.workers:.0f} per worker)", flush=True)
    print(json.dumps({"img_per_s_per_core": single, "img_per_s_workers": multi,
                      "workers": args.workers, "size": args.size, "batch": args.batch,
                      "examples": len(source), "cpu_count": os.cpu_count()}))


if __name__ == "__main__":
    main()
