"""``asmnet-build-data``: builds a TFDS dataset once (:mod:`asmnet_jax.data.tfds_builders`).

    asmnet-build-data w300 --manual-dir /path/to/300W --data-dir ~/tensorflow_datasets
    asmnet-build-data synthetic_faces --tfds-config small
    asmnet-build-data w300 --manual-dir /path/to/300W --npz exports   # + exports/w300/SPLIT.npz

``--npz DIR`` also writes every split as a portable ``DIR/NAME/SPLIT.npz`` (the stored crops and
labels as NumPy arrays, :mod:`asmnet_jax.data.sources`): training reads them with
``--config.arrays_dir=DIR`` on a machine without TensorFlow.

Prints one JSON line: dataset, builder config, data directory, the faces per split and the
exported files.
"""

from __future__ import annotations

import argparse
import json
import sys

from asmnet_jax.cli import make_parser, run
from asmnet_jax.data import sources

PROG = "asmnet-build-data"
DATASETS = ("w300", "wflw", "synthetic_faces")


def build_parser() -> argparse.ArgumentParser:
    """The command's arguments."""
    parser = make_parser(
        PROG,
        description="Builds the TFDS dataset w300, wflw or synthetic_faces (array_record) from the "
                    "official download in --manual-dir (not needed for synthetic_faces).")
    parser.add_argument("name", choices=DATASETS)
    parser.add_argument("--manual-dir", help="folder holding the official download")
    parser.add_argument("--data-dir", help="TFDS data directory (default: TFDS's, "
                                           "~/tensorflow_datasets)")
    parser.add_argument("--tfds-config", help="TFDS builder config (synthetic_faces: default, "
                                              "small, wflw98; wflw: default, detection)")
    parser.add_argument("--npz", metavar="DIR",
                        help="also write each split as DIR/NAME/SPLIT.npz (for training with "
                             "--config.arrays_dir=DIR, without TensorFlow)")
    return parser


def _build(args: argparse.Namespace) -> int:
    from asmnet_jax.data import tfds_builders

    builder = tfds_builders.build(args.name, args.manual_dir, args.data_dir, args.tfds_config)
    splits = {name: info.num_examples for name, info in builder.info.splits.items()}
    exported = {}
    if args.npz:
        num_landmarks = builder.info.features["landmarks"].shape[0]
        for split in splits:
            path = sources.npz_path(args.npz, args.name, split)
            arrays = sources.arrays_from_source(builder.as_data_source(split=split),
                                                 num_landmarks, f"{args.name} split {split}")
            sources.save_npz(arrays, path)
            exported[split] = path
    print(json.dumps({"dataset": args.name, "config": builder.builder_config.name,
                      "data_dir": str(builder.data_dir), "splits": splits, "npz": exported}))
    return 0


def main(argv=None) -> int:
    """``asmnet-build-data``; returns the exit status."""
    return run(PROG, _build, build_parser().parse_args(argv))


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
