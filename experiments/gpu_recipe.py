"""The paper-scale recipe on real faces on a GPU machine, in one call.

A GPU machine has no TensorFlow, TFDS or grain and no network, and a call carries at most 64 MiB,
while the portable ``.npz`` export of 300W holds ~500 MB of decoded crops. So the faces travel as
a *pack*: per split, the crops as JPEG bytes (all of them concatenated in one uint8 array, with an
offsets array: no object arrays, no pickle) plus their landmarks, poses, boxes and names, in one
``.npz``; ~40 MB for 300W's 1,811 + 201 faces. Two subcommands:

``pack`` (here, where the ``.npz`` export and OpenCV are)::

    python -m experiments.gpu_recipe pack --arrays-dir /work/npz --out gpu_pack \\
        --init /work/imagenet_mnv2.h5

writes ``gpu_pack/w300/{train,validation}.jpeg.npz``, a copy of the ImageNet weights (the
config's ``init='imagenet'`` reads them with h5py, which the GPU image has) and
``gpu_pack/manifest.json``; prints the sizes and the mean absolute pixel error the re-encoding
adds (measured by decoding the pack as ``train`` will).

``train`` (on the GPU machine; runs anywhere)::

    python -m experiments.gpu_recipe train --pack gpu_pack --workdir /tmp/run \\
        [--config configs/asmnet_300w.py] [--set KEY=VALUE ...] [--export DIR]

decodes the pack into :class:`asmnet_jax.data.sources.HostArrays`, writes them as the normal
``.npz`` export into a temporary ``arrays_dir`` (so that the unchanged training path reads them,
``config.input='device'`` unless ``--set input=...``), trains with
:func:`asmnet_jax.train.train_and_evaluate`, then evaluates the best checkpoint on the validation
split the way ``asmnet-eval`` does (:class:`asmnet_jax.evaluation.EvalSet` on the model of
:func:`asmnet_jax.inference.load`; ``asmnet-eval`` itself also draws its figures with OpenCV and
matplotlib), with and without flip averaging. The last stdout line is JSON: the validation NME,
FR and AUC (after the last step, from training's summary, and of the best checkpoint), the loop's
img/s (the median of the logged training windows after the first ``--skip-windows``, which hold
the compilation; also with the evaluation and save time inside each window taken out), the wall
times, the device and the steps. ``experiments/gpu_recipe.sh`` is the GPU call around it.

JPEG decoding on the GPU machine: the first of Pillow, simplejpeg, OpenCV and
torchvision.io.decode_jpeg that imports (``--decoder`` picks one; torchvision last, since it brings
PyTorch's CUDA libraries into the JAX process). The GPU image lists Pillow, torchvision and
opencv-python-headless (/work/.library/device/KINDS.md); ``gpu_recipe.sh`` installs a carried
simplejpeg wheel (0.4 MB) only if Pillow does not import. Pillow 13.0, simplejpeg 1.9.0 and
OpenCV 5.1 decoded the 300W pack to identical pixels here (libjpeg-turbo, accurate integer IDCT,
smooth chroma upsampling).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from typing import Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

_START = time.perf_counter()

#: Pack layout: PACK/manifest.json, PACK/DATASET/SPLIT.jpeg.npz, PACK/<init file name>.
MANIFEST = "manifest.json"
PACK_SUFFIX = ".jpeg.npz"
PACK_FORMAT = "asmnet_jax.jpeg_pack/1"
#: Modules the GPU machine lacks; ``--block-imports`` makes them unimportable here to prove it.
HEAVY_MODULES = ("cv2", "tensorflow", "tensorflow_datasets", "grain")
DECODERS = ("pillow", "simplejpeg", "opencv", "torchvision")
DEFAULT_CONFIG = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                              "configs", "asmnet_300w.py")


class PackError(RuntimeError):
    """A pack that cannot be written or read as asked; printed as one line."""


def block_imports(names: Sequence[str]) -> None:
    """Makes ``import NAME`` fail with ImportError in this process (as on a machine without it).
    Must run before anything imports them."""
    for name in names:
        loaded = sys.modules.get(name)
        if loaded is not None:
            raise PackError(f"--block-imports: {name} is already imported")
        sys.modules[name] = None  # the import system raises ImportError for a None entry


def loaded_heavy_modules() -> List[str]:
    """Which of :data:`HEAVY_MODULES` this process has imported."""
    return [name for name in HEAVY_MODULES if sys.modules.get(name) is not None]


# ----------------------------------------------------------------------------------------------
# JPEG encoding (here) and decoding (anywhere)


def encode_jpegs(images: np.ndarray, quality: int) -> Tuple[np.ndarray, np.ndarray]:
    """(N, H, W, 3) uint8 RGB crops -> (concatenated JPEG bytes as uint8 (B,), offsets int64
    (N + 1,)): progressive, Huffman-optimised, 4:2:0, by OpenCV."""
    import cv2

    params = [cv2.IMWRITE_JPEG_QUALITY, int(quality), cv2.IMWRITE_JPEG_OPTIMIZE, 1,
              cv2.IMWRITE_JPEG_PROGRESSIVE, 1]
    chunks, offsets = [], [0]
    for index, image in enumerate(images):
        ok, data = cv2.imencode(".jpg", cv2.cvtColor(np.ascontiguousarray(image),
                                                     cv2.COLOR_RGB2BGR), params)
        if not ok:
            raise PackError(f"OpenCV could not encode crop {index} as JPEG")
        chunks.append(data.reshape(-1))
        offsets.append(offsets[-1] + data.size)
    return (np.concatenate(chunks).astype(np.uint8, copy=False),
            np.asarray(offsets, np.int64))


def _pillow():
    import io

    from PIL import Image

    def decode(data: bytes) -> np.ndarray:
        with Image.open(io.BytesIO(data)) as image:
            return np.asarray(image.convert("RGB"))

    return decode, f"Pillow {Image.__version__}" if hasattr(Image, "__version__") else "Pillow"


def _simplejpeg():
    import simplejpeg

    return (lambda data: simplejpeg.decode_jpeg(data, colorspace="RGB"),
            f"simplejpeg {simplejpeg.__version__}")


def _torchvision():
    import torch
    import torchvision
    from torchvision.io import ImageReadMode, decode_jpeg

    def decode(data: bytes) -> np.ndarray:
        tensor = torch.frombuffer(bytearray(data), dtype=torch.uint8)
        return decode_jpeg(tensor, mode=ImageReadMode.RGB).permute(1, 2, 0).numpy()

    return decode, f"torchvision {torchvision.__version__} (decode_jpeg)"


def _opencv():
    import cv2

    def decode(data: bytes) -> np.ndarray:
        image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
        if image is None:
            raise PackError("OpenCV could not decode a JPEG of the pack")
        return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)

    return decode, f"OpenCV {cv2.__version__}"


_DECODER_MAKERS = {"pillow": _pillow, "simplejpeg": _simplejpeg, "torchvision": _torchvision,
                   "opencv": _opencv}


def jpeg_decoder(name: str = "auto") -> Tuple[Callable[[bytes], np.ndarray], str]:
    """(decode(JPEG bytes) -> (H, W, 3) uint8 RGB, description): ``name`` from
    :data:`DECODERS`, or ``"auto"``: the first of them that imports."""
    names = DECODERS if name == "auto" else (name,)
    problems = []
    for candidate in names:
        if candidate not in _DECODER_MAKERS:
            raise PackError(f"--decoder {candidate!r}: use auto or one of {', '.join(DECODERS)}")
        try:
            return _DECODER_MAKERS[candidate]()
        except ImportError as error:
            problems.append(f"{candidate}: {error}")
    raise PackError("no JPEG decoder imports (" + "; ".join(problems) + "); install Pillow or "
                    "simplejpeg (experiments/gpu_recipe.sh installs a carried wheel)")


def decode_jpegs(data: np.ndarray, offsets: np.ndarray, shape: Sequence[int],
                 decode: Callable[[bytes], np.ndarray]) -> np.ndarray:
    """The crops (N, H, W, 3) uint8 of concatenated JPEG bytes ``data`` cut at ``offsets``."""
    count = len(offsets) - 1
    images = np.empty((count, *shape), np.uint8)
    raw = np.ascontiguousarray(data, np.uint8).tobytes()
    for index in range(count):
        image = decode(raw[int(offsets[index]):int(offsets[index + 1])])
        if image.shape != tuple(shape):
            raise PackError(f"crop {index} decodes to {image.shape}, expected {tuple(shape)}")
        images[index] = image
    return images


# ----------------------------------------------------------------------------------------------
# The pack


def pack_path(pack: str, dataset: str, split: str) -> str:
    return os.path.join(pack, dataset, split + PACK_SUFFIX)


def save_pack_split(arrays, path: str, quality: int) -> Dict:
    """Writes one split (:class:`HostArrays`) as a JPEG pack file; returns its facts."""
    from asmnet_jax.files import atomic_open

    data, offsets = encode_jpegs(arrays.image, quality)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with atomic_open(path, "wb") as f:
        np.savez(f, jpeg=data, offsets=offsets,
                 shape=np.asarray(arrays.image.shape[1:], np.int64),
                 quality=np.asarray(quality, np.int64), landmarks=arrays.landmarks,
                 pose=arrays.pose, box=arrays.box, name=np.asarray(arrays.name).astype(str))
    return {"faces": len(arrays), "quality": int(quality), "jpeg_bytes": int(data.size),
            "file_bytes": os.path.getsize(path)}


def load_pack_split(path: str, num_landmarks: int,
                    decode: Callable[[bytes], np.ndarray]):
    """Reads a JPEG pack file into :class:`HostArrays` (checked as the ``.npz`` export is)."""
    import dataclasses

    from asmnet_jax.data import sources

    if not os.path.isfile(path):
        raise PackError(f"{path}: no such pack file (write it with python -m "
                        "experiments.gpu_recipe pack)")
    with np.load(path, allow_pickle=False) as stored:
        missing = [k for k in ("jpeg", "offsets", "shape", *sources.ARRAY_KEYS[1:])
                   if k not in stored.files]
        if missing:
            raise PackError(f"{path}: missing arrays {missing}")
        images = decode_jpegs(stored["jpeg"], stored["offsets"],
                              [int(s) for s in stored["shape"]], decode)
        arrays = sources.HostArrays(image=images, landmarks=stored["landmarks"],
                                    pose=stored["pose"], box=stored["box"],
                                    name=stored["name"])
    if arrays.landmarks.shape != (len(arrays), num_landmarks, 2):
        raise PackError(f"{path}: landmarks {arrays.landmarks.shape}, expected "
                        f"(N, {num_landmarks}, 2)")
    return dataclasses.replace(arrays, landmarks=arrays.landmarks.astype(np.float32),
                               pose=arrays.pose.astype(np.float32),
                               box=arrays.box.astype(np.float32))


def read_manifest(pack: str) -> Dict:
    path = os.path.join(pack, MANIFEST)
    if not os.path.isfile(path):
        raise PackError(f"{path}: no pack manifest here (write the pack with python -m "
                        "experiments.gpu_recipe pack --arrays-dir DIR --out PACK)")
    with open(path) as f:
        manifest = json.load(f)
    if manifest.get("format") != PACK_FORMAT:
        raise PackError(f"{path}: format {manifest.get('format')!r}, expected {PACK_FORMAT!r}")
    return manifest


def pixel_error(original: np.ndarray, decoded: np.ndarray) -> Dict[str, float]:
    diff = np.abs(decoded.astype(np.int16) - original.astype(np.int16))
    mse = float(np.mean(diff.astype(np.float64) ** 2))
    return {"mean_abs": float(diff.mean()), "max_abs": int(diff.max()),
            "psnr_db": float(10 * np.log10(255.0 ** 2 / mse)) if mse > 0 else float("inf")}


def write_pack(arrays_by_split: Mapping[str, object], out: str, dataset: str,
               qualities: Mapping[str, int], decoder: str = "auto",
               init: Optional[str] = None, source: str = "") -> Dict:
    """Writes the pack of ``arrays_by_split`` ({split: HostArrays}) to ``out``, measures the
    pixel error of decoding it with ``decoder``, copies ``init`` (a file) beside it; returns and
    writes the manifest."""
    decode, decoder_name = jpeg_decoder(decoder)
    os.makedirs(out, exist_ok=True)
    splits = {}
    for split, arrays in arrays_by_split.items():
        path = pack_path(out, dataset, split)
        quality = int(qualities.get(split, qualities.get("default", 90)))
        facts = save_pack_split(arrays, path, quality)
        decoded = load_pack_split(path, arrays.landmarks.shape[1], decode)
        facts["pixel_error"] = pixel_error(arrays.image, decoded.image)
        facts["labels_exact"] = bool(
            np.array_equal(decoded.landmarks, arrays.landmarks)
            and np.array_equal(decoded.pose, arrays.pose)
            and np.array_equal(decoded.box, arrays.box)
            and np.array_equal(decoded.name.astype(str), np.asarray(arrays.name).astype(str)))
        facts["file"] = os.path.relpath(path, out)
        splits[split] = facts
    init_file = None
    if init:
        init_file = os.path.basename(init)
        shutil.copyfile(init, os.path.join(out, init_file))
    faces = sum(s["faces"] for s in splits.values())
    manifest = {
        "format": PACK_FORMAT, "dataset": dataset, "source": source,
        "num_landmarks": int(next(iter(arrays_by_split.values())).landmarks.shape[1]),
        "splits": splits, "init_file": init_file,
        "init_bytes": os.path.getsize(init) if init else 0,
        "faces_bytes": sum(s["file_bytes"] for s in splits.values()),
        "mean_abs_pixel_error": sum(s["pixel_error"]["mean_abs"] * s["faces"]
                                    for s in splits.values()) / max(faces, 1),
        "measured_with": decoder_name,
        "encoder": _encoder_name(),
        "written": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    manifest["total_bytes"] = manifest["faces_bytes"] + manifest["init_bytes"]
    with open(os.path.join(out, MANIFEST), "w") as f:
        json.dump(manifest, f, indent=2)
        f.write("\n")
    return manifest


def _encoder_name() -> str:
    try:
        import cv2

        return f"OpenCV {cv2.__version__} imencode, progressive, optimised Huffman, 4:2:0"
    except ImportError:
        return "OpenCV"


def unpack(pack: str, decoder: str = "auto", splits: Optional[Sequence[str]] = None):
    """({split: HostArrays}, manifest, decoder description, decode seconds) of a pack."""
    manifest = read_manifest(pack)
    decode, decoder_name = jpeg_decoder(decoder)
    start = time.perf_counter()
    wanted = list(splits) if splits else list(manifest["splits"])
    missing = [s for s in wanted if s not in manifest["splits"]]
    if missing:
        raise PackError(f"{pack}: no split {missing} in the pack (it has "
                        f"{', '.join(manifest['splits'])})")
    arrays = {split: load_pack_split(pack_path(pack, manifest["dataset"], split),
                                     int(manifest["num_landmarks"]), decode)
              for split in wanted}
    return arrays, manifest, decoder_name, time.perf_counter() - start


# ----------------------------------------------------------------------------------------------
# pack


def pack_command(args) -> Dict:
    from asmnet_jax.data import sources

    init = args.init
    if init is None:
        from asmnet_jax import init as init_lib
        try:
            init = init_lib.find_imagenet_weights("")
        except Exception:  # noqa: BLE001 - no weights: train with --set init=scratch
            init = None
    elif init == "":
        init = None
    elif not os.path.isfile(init):
        raise PackError(f"--init {init}: no such file")
    arrays = {}
    for split in args.splits:
        path = sources.npz_path(args.arrays_dir, args.dataset, split)
        arrays[split] = sources.load_npz(path, args.num_landmarks)
        if args.limit:
            import dataclasses

            arrays[split] = dataclasses.replace(
                arrays[split], **{k: getattr(arrays[split], k)[:args.limit]
                                  for k in sources.ARRAY_KEYS})
    qualities = {"default": args.quality}
    if args.val_quality:
        qualities.update({s: args.val_quality for s in args.splits if s != "train"})
    start = time.perf_counter()
    manifest = write_pack(arrays, args.out, args.dataset, qualities, args.decoder, init,
                          source=os.path.abspath(args.arrays_dir))
    manifest["pack_s"] = round(time.perf_counter() - start, 1)
    faces_mb = manifest["faces_bytes"] / 1e6
    for split, facts in manifest["splits"].items():
        e = facts["pixel_error"]
        print(f"{split}: {facts['faces']} faces, JPEG q{facts['quality']}, "
              f"{facts['file_bytes'] / 1e6:.1f} MB, mean abs pixel error {e['mean_abs']:.3f} "
              f"(max {e['max_abs']}, PSNR {e['psnr_db']:.1f} dB)", flush=True)
    print(f"faces {faces_mb:.1f} MB + init {manifest['init_bytes'] / 1e6:.1f} MB "
          f"({manifest['init_file'] or 'none: train with --set init=scratch'}) in {args.out}; "
          f"decoded with {manifest['measured_with']}", flush=True)
    if faces_mb > args.max_mb:
        print(f"warning: the faces take {faces_mb:.1f} MB, over --max-mb {args.max_mb}: lower "
              "--quality", flush=True)
    return {"pack": os.path.abspath(args.out), "faces_mb": round(faces_mb, 2),
            "total_mb": round(manifest["total_bytes"] / 1e6, 2),
            "mean_abs_pixel_error": manifest["mean_abs_pixel_error"],
            "splits": {s: {"faces": f["faces"], "quality": f["quality"],
                           "mb": round(f["file_bytes"] / 1e6, 2), **f["pixel_error"]}
                       for s, f in manifest["splits"].items()},
            "decoder": manifest["measured_with"], "pack_s": manifest["pack_s"]}


# ----------------------------------------------------------------------------------------------
# train


def loop_speed(metrics_path: str, batch_size: int, skip_windows: int) -> Dict:
    """The loop's img/s from a run's ``metrics.jsonl``: the median ``img_per_s`` of the logged
    training windows after the first ``skip_windows`` (which hold the compilation), and the same
    with the evaluation and save seconds that fell inside each window taken out (the loop resets
    a window's clock before it evaluates or saves, so that time lands in the next window)."""
    windows, previous, pending = [], 0, 0.0
    with open(metrics_path) as f:
        for line in f:
            record = json.loads(line)
            kind = record.get("kind")
            if kind == "time":
                pending += float(record.get("eval_s", 0.0)) + float(record.get("save_s", 0.0))
            elif kind == "train":
                step = int(record["step"])
                if step > previous:
                    steps = step - previous
                    seconds = steps * batch_size / float(record["img_per_s"])
                    windows.append((steps, seconds, pending))
                previous, pending = step, 0.0
    counted = windows[skip_windows:]
    if not counted:
        return {"train_windows": len(windows), "windows_counted": 0,
                "train_img_s_median": None, "train_img_s_net_median": None}
    gross = [n * batch_size / s for n, s, _ in counted]
    net = [n * batch_size / (s - p) for n, s, p in counted if s - p > 0]
    return {"train_windows": len(windows), "windows_counted": len(counted),
            "train_img_s_median": statistics.median(gross),
            "train_img_s_net_median": statistics.median(net) if net else None,
            "train_img_s_overall": sum(n for n, _, _ in counted) * batch_size
            / sum(s for _, s, _ in counted),
            "windows_s": sum(s for _, s, _ in windows),
            "first_windows_s": sum(s for _, s, _ in windows[:skip_windows])}


def evaluate_best(workdir: str, val_arrays, batch_size: int) -> Dict:
    """The best checkpoint's validation figures, with and without flip averaging, as
    ``asmnet-eval --model WORKDIR --split validation`` computes them (same model loading, same
    :class:`EvalSet`, same batch), without its OpenCV / matplotlib reports."""
    import jax

    from asmnet_jax import inference
    from asmnet_jax.evaluation import EvalSet
    from asmnet_jax.mesh import make_mesh, replicate

    start = time.perf_counter()
    loaded = inference.load(workdir, which="best")
    mesh = make_mesh(jax.local_devices())
    batch = max(len(jax.local_devices()), batch_size - batch_size % len(jax.local_devices()))
    evalset = EvalSet(val_arrays, loaded.model, mesh, loaded.input_size, loaded.margin, batch)
    variables = replicate(loaded.variables, mesh)
    out = {"step": loaded.step}
    for flip in (False, True):
        summary = evalset.metrics(variables, flip=flip)
        suffix = "_flip" if flip else ""
        for key in ("nme", "fr", "auc"):
            out[key + suffix] = summary[key]
        if not flip and "pose_mae" in summary:
            out["pose_mae"] = summary["pose_mae"]
    out["count"] = len(val_arrays)
    out["eval_s"] = time.perf_counter() - start
    return out, loaded


def export_model(loaded, directory: str, info: Mapping) -> int:
    """The best checkpoint as a compact float16 model directory (model.json + variables.npz);
    returns its size in bytes."""
    from asmnet_jax import model_dir

    model_dir.save_model(directory, loaded.model_name, loaded.num_landmarks, loaded.variables,
                         extra=dict(info), overwrite=True, compact=True, dtype=np.float16)
    return sum(os.path.getsize(os.path.join(directory, n)) for n in os.listdir(directory))


def _device_facts() -> Dict:
    import jax

    device = jax.devices()[0]
    return {"device": getattr(device, "device_kind", str(device)), "platform": device.platform,
            "devices": jax.device_count(), "jax": jax.__version__}


def train_command(args) -> Dict:
    from experiments import common

    overrides = common.parse_overrides(args.set)
    keys = {key for key, _ in overrides}
    arrays, manifest, decoder_name, decode_s = unpack(args.pack, args.decoder)
    print(f"decoded {', '.join(f'{s}: {len(a)}' for s, a in arrays.items())} faces of "
          f"{args.pack} with {decoder_name} in {decode_s:.1f} s", flush=True)

    from asmnet_jax import train
    from asmnet_jax.cli import quiet_logs
    from asmnet_jax.data import sources

    quiet_logs()
    config = common.load_config(args.config, overrides)
    if config.dataset != manifest["dataset"]:
        raise PackError(f"the config trains on {config.dataset!r}, the pack holds "
                        f"{manifest['dataset']!r}")
    for split in (config.train_split, config.val_split):
        if split not in arrays:
            raise PackError(f"the config's split {split!r} is not in the pack "
                            f"({', '.join(arrays)})")
    if "input" not in keys:
        config.input = "device"
    if "progress_bar" not in keys:
        config.progress_bar = False
    if config.init == "imagenet" and "init_path" not in keys:
        if not manifest.get("init_file"):
            raise PackError(f"{args.pack}: the pack has no ImageNet weights for init='imagenet' "
                            "(pack with --init FILE, or train with --set init=scratch)")
        config.init_path = os.path.abspath(os.path.join(args.pack, manifest["init_file"]))
    workdir = os.path.abspath(args.workdir)
    own_arrays = args.arrays_dir is None
    arrays_dir = args.arrays_dir or tempfile.mkdtemp(prefix="gpu_recipe_arrays_")
    try:
        start = time.perf_counter()
        for split, split_arrays in arrays.items():
            sources.save_npz(split_arrays,
                             sources.npz_path(arrays_dir, manifest["dataset"], split))
        write_s = time.perf_counter() - start
        config.arrays_dir = os.path.abspath(arrays_dir)
        summary = train.train_and_evaluate(config, workdir)
        best, loaded = (evaluate_best(workdir, arrays[config.val_split], config.batch_size)
                        if not args.no_best_eval else ({}, None))
    finally:
        if own_arrays:
            shutil.rmtree(arrays_dir, ignore_errors=True)
    speed = loop_speed(os.path.join(workdir, "metrics.jsonl"), config.batch_size,
                       args.skip_windows)
    result = {
        "recipe": os.path.relpath(os.path.abspath(args.config), common.ROOT)
        if args.config else "config_base.py",
        "set": list(args.set), **_device_facts(),
        "steps": summary["step"], "epochs": summary["epoch"],
        "batch_size": config.batch_size, "input_size": config.input_size, "dtype": config.dtype,
        "init": config.init, "input": summary.get("input"),
        "train_faces": len(arrays[config.train_split]),
        "val_faces": len(arrays[config.val_split]),
        "val_nme": summary.get("val_nme"), "val_fr": summary.get("val_fr"),
        "val_auc": summary.get("val_auc"), "val_nme_flip": summary.get("val_nme_flip"),
        "val_fr_flip": summary.get("val_fr_flip"), "val_auc_flip": summary.get("val_auc_flip"),
        "best_val_nme_seen": summary.get("best_val_nme"),
        "val_nme_mean_shape": summary.get("val_nme_mean_shape"),
        "val_pose_mae": summary.get("val_pose_mae"),
        "best_checkpoint": best,
        **speed,
        "train_wall_s": summary.get("wall_s"),
        "decode_s": decode_s, "write_arrays_s": write_s,
        "decoder": decoder_name,
        "pack": {"mean_abs_pixel_error": manifest.get("mean_abs_pixel_error"),
                 "qualities": {s: f["quality"] for s, f in manifest["splits"].items()},
                 "faces_mb": round(manifest["faces_bytes"] / 1e6, 2)},
        "heavy_modules_loaded": loaded_heavy_modules(),
        "blocked_imports": sorted(n for n, m in sys.modules.items()
                                  if m is None and n in args.block_imports.split(",")),
        "workdir": workdir,
    }
    if args.export and loaded is not None:
        result["export_bytes"] = export_model(loaded, args.export, {
            "dataset": config.dataset, "input_size": config.input_size,
            "margin": float(config.margin), "input_range": config.input_range,
            "source": f"experiments/gpu_recipe.py, {result['recipe']} {' '.join(args.set)}",
            "step": loaded.step, "validation": {k: best.get(k) for k in
                                                ("nme", "fr", "auc", "nme_flip", "fr_flip",
                                                 "auc_flip")}})
        result["export"] = os.path.abspath(args.export)
    result["total_wall_s"] = time.perf_counter() - _START
    return result


# ----------------------------------------------------------------------------------------------


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("pack", help="write the JPEG pack of a .npz export (needs OpenCV)")
    p.add_argument("--arrays-dir", required=True, help="the .npz export (asmnet-build-data --npz)")
    p.add_argument("--out", required=True, help="the pack's folder")
    p.add_argument("--dataset", default="w300")
    p.add_argument("--num-landmarks", type=int, default=68)
    p.add_argument("--splits", nargs="+", default=["train", "validation"])
    p.add_argument("--quality", type=int, default=89, help="JPEG quality of the training split")
    p.add_argument("--val-quality", type=int, default=95,
                   help="JPEG quality of the other splits (0: --quality)")
    p.add_argument("--init", default=None, help="ImageNet weights file to carry along (default: "
                   "the one asmnet-train finds; '' for none)")
    p.add_argument("--limit", type=int, default=0, help="only the first N faces per split")
    p.add_argument("--max-mb", type=float, default=40.0, help="warn above this many MB of faces")
    p.add_argument("--decoder", default="auto", help="decoder to measure the error with")
    t = sub.add_parser("train", help="train and evaluate on a pack (no TensorFlow/TFDS/grain)")
    t.add_argument("--pack", required=True)
    t.add_argument("--workdir", required=True)
    t.add_argument("--config", default=DEFAULT_CONFIG)
    t.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="a config override, as --config.KEY=VALUE of asmnet-train")
    t.add_argument("--arrays-dir", default=None, help="keep the decoded .npz export here "
                   "(default: a temporary folder, removed at the end)")
    t.add_argument("--decoder", default="auto", help=f"auto or one of {', '.join(DECODERS)}")
    t.add_argument("--skip-windows", type=int, default=2,
                   help="logged training windows not counted in the img/s (compilation)")
    t.add_argument("--no-best-eval", action="store_true",
                   help="skip the evaluation of the best checkpoint")
    t.add_argument("--export", default=None, help="write the best checkpoint here as a compact "
                   "float16 model directory")
    t.add_argument("--json-out", default=None, help="also write the final JSON here")
    for q in (p, t):
        q.add_argument("--block-imports", default="",
                       help="comma-separated modules made unimportable in this process "
                            f"(e.g. {','.join(HEAVY_MODULES)}), to prove they are not needed")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    from asmnet_jax.errors import AsmnetError
    from experiments.common import ExperimentError

    try:
        block_imports([n for n in args.block_imports.split(",") if n])
        result = pack_command(args) if args.command == "pack" else train_command(args)
    except (PackError, ExperimentError, AsmnetError, FileNotFoundError) as error:
        text = " ".join(str(error).split())
        print(f"gpu_recipe {args.command}: error: {text}", file=sys.stderr, flush=True)
        return 1
    if args.command == "train":
        os.makedirs(args.workdir, exist_ok=True)
        for path in filter(None, (os.path.join(args.workdir, "gpu_recipe.json"),
                                  args.json_out)):
            with open(path, "w") as f:
                json.dump(result, f, indent=2, default=str)
                f.write("\n")
    print(json.dumps(result, default=str), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
