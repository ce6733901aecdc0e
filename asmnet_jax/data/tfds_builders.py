"""TFDS datasets ``w300``, ``wflw`` and ``synthetic_faces``, stored as array_record.

Each builder reads the official download from a manual directory (none for synthetic faces),
crops every face once (:mod:`asmnet_jax.data.examples`), labels its pose, and writes the examples:

* ``image``: (288, 288, 3) uint8 JPEG, the face with context;
* ``landmarks``: (n, 2) float32 crop pixels; ``box``: (3,) float32 face box in crop pixels;
* ``pose``: (3,) float32 degrees (:mod:`asmnet_jax.data.pose`): from ``poses.csv`` in the manual
  directory when present (``name,yaw,pitch,roll``; names as the readers give them), else fitted
  by PnP to the project's 3D face template;
* ``name``, ``subset`` text, ``flags`` (6,) int64 (WFLW attributes; zeros elsewhere).

Build once (``asmnet-build-data``) and read with :func:`data_source`, which returns a random
access source of a split; :func:`asmnet_jax.data.sources.open_split` calls it for training and
evaluation alike. Importing this module needs ``tensorflow-datasets``; building needs TensorFlow
too.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from typing import Dict, Iterator, Optional, Tuple

import numpy as np
import tensorflow_datasets as tfds

from asmnet_jax.data import crop, examples, pose as pose_lib, splits, w300, wflw
from asmnet_jax.data.errors import DataError, MissingSplit
from asmnet_jax.errors import OptionError

log = logging.getLogger(__name__)

POSE_CSV = "poses.csv"
VERSION = tfds.core.Version("1.0.0")


def _features(num_landmarks: int) -> tfds.features.FeaturesDict:
    size = examples.STORE_SIZE
    return tfds.features.FeaturesDict({
        "image": tfds.features.Image(shape=(size, size, 3), encoding_format="jpeg"),
        "landmarks": tfds.features.Tensor(shape=(num_landmarks, 2), dtype=np.float32),
        "box": tfds.features.Tensor(shape=(3,), dtype=np.float32),
        "pose": tfds.features.Tensor(shape=(3,), dtype=np.float32),
        "name": tfds.features.Text(),
        "subset": tfds.features.Text(),
        "flags": tfds.features.Tensor(shape=(6,), dtype=np.int64),
    })


@dataclasses.dataclass
class FaceBuilderConfig(tfds.core.BuilderConfig):
    """``val_fraction`` of train (grouped by photo, seeded) becomes the ``validation`` split;
    ``box`` is ``landmarks`` (the paper's protocol) or ``detection`` (WFLW's detector boxes)."""

    val_fraction: float = 0.1
    seed: int = 0
    box: str = "landmarks"


def _poses_from_csv(manual_dir) -> Optional[Dict[str, np.ndarray]]:
    path = os.path.join(manual_dir, POSE_CSV)
    return pose_lib.read_pose_csv(path) if os.path.exists(path) else None


def _pose_of(face, image_shape, num_landmarks, csv_poses) -> np.ndarray:
    if csv_poses is not None:
        if face.name not in csv_poses:
            raise DataError(POSE_CSV, f"no pose for face {face.name!r}")
        return csv_poses[face.name]
    height, width = image_shape[:2]
    return pose_lib.pose_from_landmarks(face.landmarks, (width, height), num_landmarks)


def _encode(face, num_landmarks, csv_poses, face_box=None, flags=None) -> Dict:
    image = splits.load_image(face.image_path)
    pose_deg = _pose_of(face, image.shape, num_landmarks, csv_poses)
    example = examples.make_example(image, face.landmarks, pose_deg, face.name,
                                    face_box=face_box, flags=flags, subset=face.subset
                                    if hasattr(face, "subset") else "")
    return example


def _split_generators(builder, read, root, reads: Dict[str, str], dataset: str):
    """{TFDS split: generator} for every split ``read`` finds under ``root``. A split with nothing
    to read (:class:`MissingSplit`) is left out with a warning; any other bad input stops the
    build with its file and line."""
    cfg = builder.builder_config
    csv_poses = _poses_from_csv(root)
    out = {}
    for split, name in reads.items():
        try:
            result = read(root, name, val_fraction=cfg.val_fraction, seed=cfg.seed,
                          check_images=True)
        except MissingSplit as err:
            log.warning("%s split %s not built: %s", dataset, split, err)
            continue
        out[split] = builder._generate_examples(result.records, csv_poses)
    if not out:
        raise DataError(root, f"no {dataset} split could be read")
    return out


class W300(tfds.core.GeneratorBasedBuilder):
    """300W (68 points) from the official folders: train, validation, common, challenging, full."""

    VERSION = VERSION
    BUILDER_CONFIGS = [FaceBuilderConfig(name="default")]
    MANUAL_DOWNLOAD_INSTRUCTIONS = (
        "Download 300W (https://ibug.doc.ic.ac.uk/resources/300-W/) and place its folders in the "
        "manual directory: afw/, helen/trainset/, helen/testset/, lfpw/trainset/, lfpw/testset/, "
        f"ibug/ (images with .pts files). Optional: {POSE_CSV} with name,yaw,pitch,roll.")

    def _info(self) -> tfds.core.DatasetInfo:
        return self.dataset_info_from_configs(
            features=_features(68), homepage="https://ibug.doc.ic.ac.uk/resources/300-W/")

    def _split_generators(self, dl_manager):
        root = os.fspath(dl_manager.manual_dir)
        cfg = self.builder_config
        reads = {"train": "train", "common": "common", "challenging": "challenging",
                 "full": "full"}
        if cfg.val_fraction > 0:
            reads["validation"] = "val"
        return _split_generators(self, w300.read_300w, root, reads, "300W")

    def _generate_examples(self, records, csv_poses) -> Iterator[Tuple[str, Dict]]:
        for face in records:
            yield face.name, _encode(face, 68, csv_poses)


class Wflw(tfds.core.GeneratorBasedBuilder):
    """WFLW (98 points): train, validation, test and the six attribute subsets of test."""

    VERSION = VERSION
    BUILDER_CONFIGS = [FaceBuilderConfig(name="default"),
                       FaceBuilderConfig(name="detection", box="detection")]
    MANUAL_DOWNLOAD_INSTRUCTIONS = (
        "Download WFLW (https://wywu.github.io/projects/LAB/WFLW.html) and place WFLW_images/ and "
        "WFLW_annotations/ (with list_98pt_rect_attr_train_test/) in the manual directory. "
        f"Optional: {POSE_CSV} with name,yaw,pitch,roll.")

    def _info(self) -> tfds.core.DatasetInfo:
        return self.dataset_info_from_configs(
            features=_features(98), homepage="https://wywu.github.io/projects/LAB/WFLW.html")

    def _split_generators(self, dl_manager):
        root = os.fspath(dl_manager.manual_dir)
        cfg = self.builder_config
        reads = {"train": "train", "test": "test"}
        if cfg.val_fraction > 0:
            reads["validation"] = "val"
        for attribute in wflw.ATTRIBUTES:
            reads[f"test_{attribute}"] = f"test_{attribute}"
        return _split_generators(self, wflw.read_wflw, root, reads, "WFLW")

    def _generate_examples(self, records, csv_poses) -> Iterator[Tuple[str, Dict]]:
        use_detection = self.builder_config.box == "detection"
        for face in records:
            box = crop.detection_box(*face.box, margin=0.0) if use_detection else None
            flags = [face.attributes[a] for a in wflw.ATTRIBUTES]
            example = _encode(face, 98, csv_poses, face_box=box, flags=flags)
            example["subset"] = "wflw"
            yield face.name, example


@dataclasses.dataclass
class SyntheticConfig(tfds.core.BuilderConfig):
    """Sizes of the synthetic splits and the landmark markup."""

    train: int = 20000
    validation: int = 1000
    test: int = 1000
    num_landmarks: int = 68
    seed: int = 0


class SyntheticFaces(tfds.core.GeneratorBasedBuilder):
    """Procedural faces (:mod:`asmnet_jax.data.synthetic`) with exact landmarks and pose."""

    VERSION = VERSION
    BUILDER_CONFIGS = [SyntheticConfig(name="default"),
                       SyntheticConfig(name="small", train=2000, validation=200, test=200),
                       SyntheticConfig(name="wflw98", num_landmarks=98)]

    def _info(self) -> tfds.core.DatasetInfo:
        return self.dataset_info_from_configs(
            features=_features(self.builder_config.num_landmarks))

    def _split_generators(self, dl_manager):
        cfg = self.builder_config
        return {split: self._generate_examples(split, getattr(cfg, split))
                for split in examples.SYNTHETIC_SPLIT_SEEDS}

    def _generate_examples(self, split, count) -> Iterator[Tuple[str, Dict]]:
        cfg = self.builder_config
        seed = examples.synthetic_seed(cfg.seed, split)
        for index in range(count):
            yield f"{split}/{index}", examples.synthetic_example(
                seed, index, num_landmarks=cfg.num_landmarks, split=split)


BUILDERS = {"w300": W300, "wflw": Wflw, "synthetic_faces": SyntheticFaces}


def get_builder(name: str, data_dir=None, config: Optional[str] = None):
    """The builder ``name`` ('w300', 'wflw', 'synthetic_faces'), configuration ``config``."""
    if name not in BUILDERS:
        raise OptionError(f"unknown dataset {name!r}; choose one of {sorted(BUILDERS)}")
    kwargs = {"data_dir": os.fspath(data_dir)} if data_dir is not None else {}
    if config is not None:
        configs = [c.name for c in BUILDERS[name].BUILDER_CONFIGS]
        if config not in configs:
            raise OptionError(f"dataset {name!r} has no builder config {config!r} (--tfds-config); "
                              f"it has {', '.join(configs)}")
        kwargs["config"] = config
    return BUILDERS[name](file_format="array_record", **kwargs)


def build(name: str, manual_dir=None, data_dir=None, config: Optional[str] = None):
    """Builds (once) and returns the builder; ``manual_dir`` holds the official download."""
    builder = get_builder(name, data_dir, config)
    if name != "synthetic_faces":
        if manual_dir is None:
            raise OptionError(f"dataset {name!r} is built from its official download: pass "
                              "manual_dir (--manual-dir)")
        if not os.path.isdir(manual_dir) or not os.listdir(manual_dir):
            raise DataError(manual_dir, f"manual directory of {name!r} is missing or empty. "
                            + BUILDERS[name].MANUAL_DOWNLOAD_INSTRUCTIONS)
    download_config = tfds.download.DownloadConfig(
        manual_dir=os.fspath(manual_dir) if manual_dir is not None else None)
    builder.download_and_prepare(download_config=download_config)
    return builder


def built_builder(name: str, data_dir=None, config: Optional[str] = None):
    """The builder of dataset ``name``, which must be built: FileNotFoundError naming the
    directory looked in and the command that builds it otherwise."""
    builder = get_builder(name, data_dir, config)
    if not builder.is_prepared():
        raise FileNotFoundError(
            f"dataset {name!r} (config {builder.builder_config.name!r}) is not built in "
            f"{builder.data_dir}; build it with: asmnet-build-data {name} --manual-dir DIR "
            "(or give the --data-dir it was built in)")
    return builder


def data_source(name: str, split: str, data_dir=None, config: Optional[str] = None):
    """A random-access source of the built split (raises naming the directory if not built)."""
    builder = built_builder(name, data_dir, config)
    if split not in builder.info.splits:
        raise OptionError(f"dataset {name!r} has no split {split!r}; it has "
                          f"{sorted(builder.info.splits)}")
    return builder.as_data_source(split=split)
