"""Training: ``train_and_evaluate(config, workdir)`` and its parts.

The loop: build the data sources, fit the ASM on the training shapes, create or restore the train
state, then for each step feed this process's part of the global batch to the compiled
data-parallel step (:mod:`asmnet_jax.steps`); evaluate the validation NME and checkpoint at epoch
ends; log to the console, TensorBoard and ``metrics.jsonl``; stop with a clear message on a
non-finite loss. A restarted run resumes from the latest good checkpoint (step, parameters,
optimizer state, RNG and data position) and continues exactly as if it had never stopped.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import math
import os
import time
from typing import Dict, Optional, Tuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import orbax.checkpoint as ocp
from orbax.checkpoint.checkpoint_managers import preservation_policy as ocp_preservation

from asmnet_jax import landmarks as lm
from asmnet_jax import eval_loop
from asmnet_jax import init as init_lib
from asmnet_jax import metrics
from asmnet_jax import steps as steps_lib
from asmnet_jax.asm import ShapeModel
from asmnet_jax.config_base import base_config, unknown_key_message
from asmnet_jax.data import augment, geometry, pipeline, resident
from asmnet_jax.depthwise import IMPLS, resolve_impl
from asmnet_jax.errors import AsmnetError
from asmnet_jax.files import atomic_open
from asmnet_jax.losses import LANDMARK_LOSSES
from asmnet_jax.models import INPUT_RANGES, MODELS, create_model

log = logging.getLogger(__name__)

DATASET_LANDMARKS = {"w300": 68, "wflw": 98}
SCHEDULES = ("cosine", "constant", "authors_cyclic")
#: Where training batches are made (config.input; asmnet_jax/data/resident.py).
INPUTS = ("auto", "device", "host")
#: Compute dtypes (parameters stay float32). float64 needs JAX_ENABLE_X64 (exactness tests).
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float64": jnp.float64}


class ConfigError(AsmnetError, ValueError):
    """A configuration key with a bad value; the message names the key."""


class TrainingDiverged(AsmnetError, RuntimeError):
    """The loss became NaN or infinite."""


# ----------------------------------------------------------------------------------------------
# Configuration


def check_config(config: ml_collections.ConfigDict) -> None:
    """Rejects unknown keys and bad values before anything is built, naming the key."""
    reference = base_config()

    def walk(cfg, ref, prefix):
        for key in cfg.keys():
            name = f"{prefix}{key}"
            if key not in ref:
                raise ConfigError(unknown_key_message(name[len("config."):]))
            if isinstance(ref[key], ml_collections.ConfigDict):
                walk(cfg[key], ref[key], name + ".")

    walk(config, reference, "config.")

    def require(ok, key, message):
        if not ok:
            raise ConfigError(f"config.{key}: {message}")

    require(config.model in MODELS, "model", f"{config.model!r} is not one of {sorted(MODELS)}")
    require(config.dataset in ("synthetic", *DATASET_LANDMARKS), "dataset",
            f"{config.dataset!r} is not synthetic, w300 or wflw")
    require(config.num_landmarks in lm.FLIP_ORDERS, "num_landmarks",
            f"{config.num_landmarks} is not 68 or 98")
    expected = DATASET_LANDMARKS.get(config.dataset)
    require(expected is None or expected == config.num_landmarks, "num_landmarks",
            f"{config.num_landmarks} does not match dataset {config.dataset!r}, which has "
            f"{expected} points")
    require(config.input_size > 0 and config.input_size % 32 == 0, "input_size",
            f"{config.input_size} is not a positive multiple of 32")
    require(0.0 < config.asm_variance < 1.0, "asm_variance", "must be in (0, 1)")
    require(config.dtype in DTYPES, "dtype", f"{config.dtype!r} is not one of {sorted(DTYPES)}")
    require(config.dtype != "float64" or jax.config.jax_enable_x64, "dtype",
            "float64 needs 64-bit JAX (JAX_ENABLE_X64=1)")
    require(config.depthwise_impl in IMPLS, "depthwise_impl",
            f"{config.depthwise_impl!r} is not one of {IMPLS}")
    require(config.optimizer.schedule in SCHEDULES, "optimizer.schedule",
            f"{config.optimizer.schedule!r} is not one of {SCHEDULES}")
    require(config.optimizer.name in ("adam", "adamw", "sgd"), "optimizer.name",
            f"{config.optimizer.name!r} is not adam, adamw or sgd")
    require(config.head_init in ("keras", "mean"), "head_init",
            f"{config.head_init!r} is not keras or mean")
    require(0.0 <= config.bn_momentum < 1.0, "bn_momentum", "must be in [0, 1)")
    require(0.0 <= config.ema_decay < 1.0, "ema_decay", f"{config.ema_decay} is not in [0, 1)")
    require(config.landmark_loss in LANDMARK_LOSSES, "landmark_loss",
            f"{config.landmark_loss!r} is not one of {LANDMARK_LOSSES}")
    require(config.input_range in INPUT_RANGES, "input_range",
            f"{config.input_range!r} is not one of {INPUT_RANGES}")
    require(config.init in init_lib.INITS, "init",
            f"{config.init!r} is not one of {init_lib.INITS}")
    require(config.init != "checkpoint" or bool(config.init_path), "init_path",
            "init='checkpoint' needs the workdir, checkpoint or model directory to start from")
    require(config.init != "imagenet" or config.input_range == "signed", "input_range",
            "ImageNet MobileNetV2 was trained on inputs in [-1, 1]: set input_range='signed' "
            "with init='imagenet'")
    require(config.init_bn_images >= 0, "init_bn_images", "must be 0 or positive")
    require(config.batch_size > 0, "batch_size", "must be positive")
    require(config.batch_size % jax.device_count() == 0, "batch_size",
            f"{config.batch_size} is not divisible by the {jax.device_count()} devices")
    require(config.num_epochs > 0, "num_epochs", "must be positive")
    require(config.max_steps == -1 or config.max_steps > 0, "max_steps",
            f"{config.max_steps}: must be positive, or -1 for no limit")
    require(0.0 <= config.margin < 1.0, "margin", f"{config.margin} is not in [0, 1)")
    require(0.0 <= config.dropout_rate < 1.0, "dropout_rate",
            f"{config.dropout_rate} is not in [0, 1)")
    require(config.head_l2 >= 0.0, "head_l2", f"{config.head_l2} is negative")
    require(config.num_workers >= 0, "num_workers", f"{config.num_workers} is negative")
    require(config.input in INPUTS, "input", f"{config.input!r} is not one of {INPUTS}")
    for split in ("train", "validation"):
        require(config.synthetic[split] > 0, f"synthetic.{split}",
                f"{config.synthetic[split]}: must be positive")
    require(bool(config.train_split) and bool(config.val_split), "train_split",
            "the train and validation split names must not be empty")
    # Intervals and counts of the loop.
    require(config.log_every_steps > 0, "log_every_steps",
            f"{config.log_every_steps}: must be positive")
    require(config.eval_every_epochs > 0, "eval_every_epochs",
            f"{config.eval_every_epochs}: must be positive")
    require(config.checkpoint_every_epochs > 0, "checkpoint_every_epochs",
            f"{config.checkpoint_every_epochs}: must be positive")
    require(config.keep_checkpoints >= 1, "keep_checkpoints",
            f"{config.keep_checkpoints}: at least the latest checkpoint is kept (>= 1)")
    # The optimiser.
    opt = config.optimizer
    require(opt.learning_rate > 0.0, "optimizer.learning_rate",
            f"{opt.learning_rate}: must be positive")
    require(opt.warmup_epochs >= 0.0, "optimizer.warmup_epochs",
            f"{opt.warmup_epochs} is negative")
    require(opt.weight_decay >= 0.0, "optimizer.weight_decay", f"{opt.weight_decay} is negative")
    require(0.0 <= opt.b1 < 1.0, "optimizer.b1", f"{opt.b1} is not in [0, 1)")
    require(0.0 <= opt.b2 < 1.0, "optimizer.b2", f"{opt.b2} is not in [0, 1)")
    require(opt.grad_clip >= 0.0, "optimizer.grad_clip", f"{opt.grad_clip} is negative (0: off)")
    require(opt.schedule != "authors_cyclic" or 0.0 < opt.cyclic_min_lr <= opt.learning_rate,
            "optimizer.cyclic_min_lr", f"{opt.cyclic_min_lr} is not in (0, learning_rate]")
    require(opt.cyclic_half_cycle_epochs > 0.0, "optimizer.cyclic_half_cycle_epochs",
            f"{opt.cyclic_half_cycle_epochs}: must be positive")
    require(opt.time_decay >= 0.0, "optimizer.time_decay", f"{opt.time_decay} is negative")
    try:
        augment.AugmentConfig.from_dict(config.augment)
    except (ValueError, TypeError) as err:
        raise ConfigError(str(err).replace("AugmentConfig.", "config.augment.")) from err


# ----------------------------------------------------------------------------------------------
# Data


def load_sources(config) -> Tuple[object, object]:
    """(train source, validation source) for ``config.dataset``."""
    if config.dataset == "synthetic":  # rendered once, into memory
        return tuple(pipeline.synthetic_split(split, config.synthetic[split],
                                              config.synthetic.seed, config.num_landmarks,
                                              config.input_size, in_memory=True)
                     for split in ("train", "validation"))
    if config.arrays_dir:  # portable exports: no TensorFlow needed
        return tuple(resident.ArraySource(resident.load_npz(
            resident.npz_path(config.arrays_dir, config.dataset, split), config.num_landmarks))
            for split in (config.train_split, config.val_split))
    from asmnet_jax.data import tfds_builders

    data_dir = config.data_dir or None
    return (tfds_builders.data_source(config.dataset, config.train_split, data_dir),
            tfds_builders.data_source(config.dataset, config.val_split, data_dir))


def host_arrays(source, config, what: str) -> resident.HostArrays:
    """The examples of ``source`` stacked (a ``.npz`` export's arrays are used as they are)."""
    if isinstance(source, resident.ArraySource):
        return source.arrays
    return resident.arrays_from_source(source, config.num_landmarks, what)


def resolve_input(config, train_source) -> str:
    """``config.input`` with "auto" decided: "device" when one device's shard of the training set
    takes at most :data:`resident.AUTO_MEMORY_FRACTION` of the device's memory."""
    if config.input != "auto":
        return config.input
    image = np.asarray(train_source[0]["image"])
    estimate = len(train_source) * (image.nbytes + 4 * (2 * config.num_landmarks + 6))
    memory = resident.device_memory_bytes()
    return "device" if resident.fits(estimate, jax.device_count(), memory) else "host"


def training_labels(source, config) -> Tuple[np.ndarray, np.ndarray]:
    """Ground-truth landmark vectors (N, 2n) and poses (N, 3) of ``source`` in model units (base
    crop, no augmentation): what the ASM and the mean-initialised heads are fitted on."""
    shapes, poses = [], []
    for index in range(len(source)):
        example = source[index]
        matrix = pipeline.base_matrix(example["box"], config.margin, config.input_size)
        points = geometry.transform_points(example["landmarks"], matrix)
        shapes.append(lm.pixels_to_model(points, config.input_size))
        poses.append(lm.degrees_to_model_pose(example["pose"]))
    return np.stack(shapes), np.stack(poses)


def mean_head_init(params, mean_landmarks, mean_pose, scale: float = 0.1):
    """Heads that start at the training set's mean landmarks (2n,) and pose (3,) in model units,
    with kernels scaled by ``scale``."""
    params = dict(params)
    for name, bias in (("landmark_head", mean_landmarks), ("pose_head", mean_pose)):
        head = dict(params[name])
        head["kernel"] = head["kernel"] * scale
        head["bias"] = jnp.asarray(bias, head["bias"].dtype)
        params[name] = head
    return params


def pipeline_config(config) -> pipeline.PipelineConfig:
    return pipeline.PipelineConfig(
        batch_size=config.batch_size, input_size=config.input_size, margin=config.margin,
        num_landmarks=config.num_landmarks, seed=config.seed, num_workers=config.num_workers,
        augment=augment.AugmentConfig.from_dict(config.augment))


# ----------------------------------------------------------------------------------------------
# Optimisation


def learning_rate_schedule(opt, steps_per_epoch: int, total_steps: int):
    """The learning rate as a function of the step (see ``config.optimizer``)."""
    if opt.schedule == "constant":
        return optax.constant_schedule(opt.learning_rate)
    if opt.schedule == "cosine":
        warmup = int(round(opt.warmup_epochs * steps_per_epoch))
        return optax.warmup_cosine_decay_schedule(
            0.0, opt.learning_rate, max(warmup, 1), max(total_steps, warmup + 1))
    half = max(1.0, opt.cyclic_half_cycle_epochs * steps_per_epoch)
    low, high, decay = opt.cyclic_min_lr, opt.learning_rate, opt.time_decay

    def authors_cyclic(step):
        # Triangular cycle starting at the low end, then Keras' time decay.
        position = jnp.mod(step / half, 2.0)
        triangle = 1.0 - jnp.abs(position - 1.0)
        return (low + (high - low) * triangle) / (1.0 + decay * step)

    return authors_cyclic


def make_optimizer(opt, schedule) -> optax.GradientTransformation:
    parts = []
    if opt.grad_clip > 0:
        parts.append(optax.clip_by_global_norm(opt.grad_clip))
    if opt.name == "adamw":
        parts.append(optax.adamw(schedule, b1=opt.b1, b2=opt.b2, weight_decay=opt.weight_decay))
    elif opt.name == "sgd":
        parts.append(optax.sgd(schedule, momentum=opt.b1 or None))
    else:
        parts.append(optax.adam(schedule, b1=opt.b1, b2=opt.b2))
    return optax.chain(*parts)


def schedule_and_optimizer(opt, steps_per_epoch: int, total_steps: int):
    """(:func:`learning_rate_schedule`, :func:`make_optimizer`) for ``config.optimizer``, the same
    objects for the same settings within a process, so that the steps compiled for them are
    reused (:func:`asmnet_jax.steps.compile_train_step` keeps them per optimizer object)."""
    return _schedule_and_optimizer(opt.to_json(sort_keys=True), int(steps_per_epoch),
                                   int(total_steps))


@functools.lru_cache(maxsize=8)
def _schedule_and_optimizer(opt_json: str, steps_per_epoch: int, total_steps: int):
    opt = ml_collections.ConfigDict(json.loads(opt_json))  # scalars only: an exact round trip
    schedule = learning_rate_schedule(opt, steps_per_epoch, total_steps)
    return schedule, make_optimizer(opt, schedule)


# ----------------------------------------------------------------------------------------------
# Checkpoints


class Checkpoints:
    """Orbax checkpoints of the train state: the latest ``keep`` plus the best by validation NME.

    A checkpoint that fails to restore (corrupt or partial) is skipped with a warning and the
    previous one is tried.
    """

    def __init__(self, directory: str, keep: int):
        policy = ocp_preservation.AnyPreservationPolicy([
            ocp_preservation.LatestN(n=max(int(keep), 1)),
            ocp_preservation.BestN(get_metric_fn=lambda m: m["val_nme"], reverse=True, n=1,
                                   keep_checkpoints_without_metrics=False),
        ])
        # best_fn makes orbax write each checkpoint's metrics to disk; without it BestN forgets
        # them on restart and deletes the best checkpoint of the earlier session.
        options = ocp.CheckpointManagerOptions(preservation_policy=policy, create=True,
                                               best_fn=lambda m: m["val_nme"], best_mode="min",
                                               enable_async_checkpointing=True)
        self.manager = ocp.CheckpointManager(os.path.abspath(directory), options=options,
                                             item_names=("state", "meta"))

    def save(self, state, meta: Dict, val_nme: Optional[float] = None) -> None:
        """Starts writing ``state`` (host arrays) and returns: the files are written in the
        background while training goes on (on a GPU, one save of ~800 small arrays takes longer
        than a 300W epoch). A checkpoint appears under its step only once complete; the next
        save, :meth:`wait` and :meth:`close` wait for the one in flight."""
        metrics = {"val_nme": float(val_nme)} if val_nme is not None else None
        self.manager.save(int(meta["step"]), args=ocp.args.Composite(
            state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)), metrics=metrics)

    def wait(self) -> None:
        """Returns once the save in flight, if any, is on disk."""
        self.manager.wait_until_finished()

    def restore_latest(self, abstract_state):
        """(state, meta) of the newest checkpoint that restores, or (None, None)."""
        for step in sorted(self.manager.all_steps(), reverse=True):
            try:
                restored = self.manager.restore(step, args=ocp.args.Composite(
                    state=ocp.args.StandardRestore(abstract_state), meta=ocp.args.JsonRestore()))
                return restored["state"], restored["meta"]
            except Exception as err:  # noqa: BLE001 - any unreadable checkpoint is skipped
                log.warning("checkpoint at step %d in %s cannot be restored (%s: %s); trying "
                            "the previous one", step, self.manager.directory,
                            type(err).__name__, err)
        return None, None

    def read(self, step: Optional[int] = None):
        """(state as nested dicts of arrays, meta) at ``step`` (default the latest), without a
        template: for inspection and evaluation tools."""
        step = self.manager.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f"no checkpoint in {self.manager.directory}")
        restored = self.manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(), meta=ocp.args.JsonRestore()))
        return restored["state"], restored["meta"]

    def close(self):
        self.manager.close()


# ----------------------------------------------------------------------------------------------
# Evaluation


# ----------------------------------------------------------------------------------------------
# The loop


class _Logger:
    """Console progress bar, TensorBoard scalars and ``metrics.jsonl`` (process 0 only)."""

    def __init__(self, workdir, total_steps, start_step, enabled, progress_bar):
        self.enabled = enabled
        self.jsonl = open(os.path.join(workdir, "metrics.jsonl"), "a") if enabled else None
        self.writer = None
        if enabled:
            try:
                from tensorboardX import SummaryWriter

                self.writer = SummaryWriter(os.path.join(workdir, "tensorboard"))
            except ImportError:  # pragma: no cover - tensorboardX is a dependency
                log.warning("tensorboardX is not installed: no TensorBoard scalars")
        self.bar = None
        if enabled and progress_bar:
            from tqdm import tqdm

            self.bar = tqdm(total=total_steps, initial=start_step, unit="step",
                            dynamic_ncols=True, mininterval=1.0)

    def scalars(self, step: int, values: Dict[str, float], prefix: str):
        if not self.enabled:
            return
        if self.writer is not None:
            for key, value in values.items():
                if isinstance(value, (int, float)) and math.isfinite(value):
                    self.writer.add_scalar(f"{prefix}/{key}", value, step)
        self.jsonl.write(json.dumps({"step": step, "kind": prefix, **values}) + "\n")
        self.jsonl.flush()

    def progress(self, advance: int, postfix: Dict[str, str]):
        if self.bar is not None:
            self.bar.update(advance)
            self.bar.set_postfix(postfix, refresh=False)

    def write(self, text: str):
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.write(text)
        else:
            print(text, flush=True)

    def close(self):
        if self.bar is not None:
            self.bar.close()
        if self.writer is not None:
            self.writer.close()
        if self.jsonl is not None:
            self.jsonl.close()


def initial_weights(config, model, state, train_source, pcfg) -> Tuple[Dict, bool]:
    """The starting variables of a fresh run with ``config.init`` != "scratch", and whether its
    heads are new (so that ``head_init`` applies). Logs what it did."""
    variables = jax.device_get({"params": state.params, "batch_stats": state.batch_stats})
    if config.init == "checkpoint":
        variables, summary = init_lib.load_checkpoint_weights(
            config.init_path, config.model, config.num_landmarks, config.input_range, variables)
        log.info("warm start from %s (step %s): %d arrays copied%s", summary["source"],
                 summary["step"], summary["copied"],
                 f"; new {', '.join(summary['new_heads'])}" if summary["new_heads"] else "")
        return variables, bool(summary["new_heads"])
    path = init_lib.find_imagenet_weights(config.init_path)
    variables, summary = init_lib.load_imagenet_backbone(path, variables)
    log.info("backbone from ImageNet weights %s (%d values%s)", path, summary["backbone_values"],
             "; its BNs are folded into the convolutions" if summary["folded_batch_norm"] else "")
    if config.init_bn_images > 0:
        count = min(config.init_bn_images, len(train_source))
        batch = min(config.batch_size, 64)
        if isinstance(train_source, resident.ArraySource):  # in memory: no grain or OpenCV
            images = resident.augmented_images(train_source.arrays, config.margin,
                                               config.input_size, pcfg.augment, config.seed,
                                               batch, max(1, count // batch))
        else:
            dataset = pipeline.train_dataset(train_source,
                                             dataclasses.replace(pcfg, batch_size=batch))
            images = [dataset[k]["image"] for k in range(max(1, count // batch))]
        variables, bn = init_lib.reestimate_batch_norm(model, variables, images)
        log.info("BN re-estimation: %d BatchNorms rewritten from the statistics of %d augmented "
                 "training crops (same function; scales x%.3g median, x%.3g..x%.3g)",
                 bn["layers"], bn["images"], bn["scale_factor_median"], bn["scale_factor_min"],
                 bn["scale_factor_max"])
    return variables, True


def build_model(config, bn_axis_name=None):
    kwargs = dict(dtype=DTYPES[config.dtype],
                  depthwise_impl=resolve_impl(config.depthwise_impl, DTYPES[config.dtype]),
                  bn_axis_name=bn_axis_name, bn_momentum=config.bn_momentum,
                  input_range=config.input_range)
    if config.model == "asmnet":
        kwargs["dropout_rate"] = config.dropout_rate
    return create_model(config.model, config.num_landmarks, **kwargs)


def host_copy(tree):
    """NumPy copy of a replicated pytree, read from this process's first device (works when the
    arrays span several processes, where ``jax.device_get`` cannot)."""
    return jax.tree_util.tree_map(lambda x: np.asarray(x.addressable_data(0)), tree)


def _fmt(value: float) -> str:
    return f"{value:.4g}"


def due(step: int, steps_per_epoch: int, last_step: int, config) -> Tuple[bool, bool, bool]:
    """(log, evaluate, save) after ``step`` steps: evaluations and saves at the ends of every
    ``eval_every_epochs``-th and ``checkpoint_every_epochs``-th epoch and after the last step;
    metrics are fetched every ``log_every_steps`` steps and wherever an evaluation or save is due,
    but not at an epoch end with nothing to do (on a GPU a 300W epoch is a few steps, and each
    fetch stops the device)."""
    last = step == last_step
    epoch, within = divmod(step, steps_per_epoch)
    end_of_epoch = within == 0
    evaluate = last or (end_of_epoch and epoch % config.eval_every_epochs == 0)
    save = last or (end_of_epoch and epoch % config.checkpoint_every_epochs == 0)
    return step % config.log_every_steps == 0 or evaluate or save, evaluate, save


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> Dict:
    """Trains (or resumes) the run in ``workdir``; returns the final summary (also written to
    ``workdir/metrics.json``)."""
    wall_start = time.perf_counter()
    check_config(config)
    if config.init == "imagenet":  # fail before any data is read or anything compiled
        init_lib.find_imagenet_weights(config.init_path)
    elif config.init == "checkpoint":
        from asmnet_jax.inference import resolve_model_path

        try:
            resolve_model_path(config.init_path)
        except FileNotFoundError as error:
            raise init_lib.InitError(f"config.init_path: {error}") from None
    workdir = os.path.abspath(workdir)
    os.makedirs(workdir, exist_ok=True)
    process_index, process_count = jax.process_index(), jax.process_count()
    is_main = process_index == 0
    if is_main:
        with atomic_open(os.path.join(workdir, "config.json")) as f:
            f.write(config.to_json_best_effort(indent=2))

    train_source, val_source = load_sources(config)
    input_path = resolve_input(config, train_source)
    if input_path == "device":  # read once; labels, BN re-estimation and placement use the copy
        load_start = time.perf_counter()
        train_source = resident.ArraySource(host_arrays(train_source, config,
                                                        "the training split"))
        val_source = resident.ArraySource(host_arrays(val_source, config,
                                                      "the validation split"))
        log.info("input on the device: %d training and %d validation faces (%.0f MB) read in "
                 "%.1f s", len(train_source), len(val_source),
                 (train_source.arrays.nbytes + val_source.arrays.nbytes) / 1e6,
                 time.perf_counter() - load_start)
    pcfg = pipeline_config(config)
    steps_per_epoch = len(train_source) // config.batch_size
    if steps_per_epoch == 0:
        raise ConfigError(f"config.batch_size: {config.batch_size} is larger than the "
                          f"{len(train_source)} training examples")
    total_steps = steps_per_epoch * config.num_epochs
    last_step = total_steps if config.max_steps <= 0 else min(total_steps, config.max_steps)

    shape_model = None
    shapes, poses = training_labels(train_source, config)
    # The mean training shape's validation NME: the bar a model that learned nothing would reach.
    val_shapes, val_poses = training_labels(val_source, config)
    mean_shape_nme = 100 * float(np.mean(metrics.per_face_nme(
        np.broadcast_to(shapes.mean(axis=0), val_shapes.shape), val_shapes)))
    if config.asm_loss:
        asm_path = os.path.join(workdir, "asm.npz")
        shape_model = ShapeModel.fit(shapes, config.asm_variance)
        if is_main:
            shape_model.save(asm_path)
        log.info("ASM: %d components keep %.0f%% of the shape variance",
                 shape_model.num_components, 100 * config.asm_variance)

    mesh = steps_lib.make_mesh()
    model = build_model(config, bn_axis_name=steps_lib.DATA_AXIS)
    schedule, optimizer = schedule_and_optimizer(config.optimizer, steps_per_epoch, total_steps)
    settings = steps_lib.LossSettings(total_epochs=config.num_epochs,
                                      steps_per_epoch=steps_per_epoch,
                                      head_l2_weight=config.head_l2,
                                      landmark_loss=config.landmark_loss,
                                      ema_decay=config.ema_decay)
    state = steps_lib.create_train_state(model, optimizer, jax.random.key(config.seed),
                                         config.input_size)
    checkpoints = Checkpoints(os.path.join(workdir, "checkpoints"), config.keep_checkpoints)
    resuming = checkpoints.manager.latest_step() is not None
    new_heads = True
    if not resuming and config.init != "scratch":
        variables, new_heads = initial_weights(config, model, state, train_source, pcfg)
        state = state.replace(params=variables["params"], batch_stats=variables["batch_stats"])
    if config.head_init == "mean" and new_heads:
        params = mean_head_init(state.params, shapes.mean(axis=0), poses.mean(axis=0))
        state = state.replace(params=params)
    state = state.replace(opt_state=optimizer.init(state.params))
    if config.ema_decay > 0:
        state = steps_lib.with_ema(state)
    restored, meta = checkpoints.restore_latest(jax.tree_util.tree_map(
        ocp.utils.to_shape_dtype_struct, state))
    best_nme = math.inf
    if restored is not None:
        state = restored
        best_nme = meta.get("best_val_nme", math.inf)
        log.info("resumed from step %d", int(state.step))
    state = steps_lib.replicate(state, mesh)
    shape_model = steps_lib.replicate(shape_model, mesh) if shape_model is not None else None
    start_step = int(state.step)
    local_batch = config.batch_size // jax.device_count()
    if input_path == "device":
        spec = resident.ResidentSpec(local_batch=local_batch, steps_per_epoch=steps_per_epoch,
                                     input_size=config.input_size, augment=pcfg.augment)
        train_data = resident.place(train_source.arrays, config.margin, config.input_size, mesh)
        val_data = resident.place(val_source.arrays, config.margin, config.input_size, mesh)
        train_step = steps_lib.compile_train_step(model, optimizer, settings, mesh, spec)
        next_input = lambda: train_data  # noqa: E731 - the step cuts its own batch
    else:
        train_step = steps_lib.compile_train_step(model, optimizer, settings, mesh)
        sharding = steps_lib.batch_sharding(mesh)
        train_batches = pipeline.iterate(
            pipeline.train_dataset(train_source, pcfg, process_index, process_count),
            start=start_step, num_workers=config.num_workers)
        next_input = lambda: pipeline.device_batch(next(train_batches), sharding)  # noqa: E731

    def validate(flip: bool = False) -> Dict:
        variables = steps_lib.eval_variables(state)
        if input_path == "device":
            predict = steps_lib.compile_resident_eval(model, mesh, config.input_size,
                                                      local_batch, flip=flip)
            return eval_loop.resident_validation_metrics(
                predict, variables, val_data, val_shapes, lm.model_pose_to_degrees(val_poses),
                config.num_landmarks)
        predict = steps_lib.compile_eval_step(model, mesh, flip=flip)
        return eval_loop.validation_metrics(predict, variables, val_source, pcfg,
                                            config.num_landmarks, mesh, process_index,
                                            process_count)

    logger = _Logger(workdir, last_step, start_step, is_main, config.progress_bar)
    logger.write(f"{config.model} on {config.dataset}: {len(train_source)} training faces, "
                 f"{steps_per_epoch} steps per epoch, {total_steps} steps, "
                 f"{jax.device_count()} device(s) in {process_count} process(es), input on the "
                 f"{input_path}; the mean shape's validation NME is {mean_shape_nme:.2f}%")
    val_summary: Dict = {}
    step = start_step
    window_start, window_steps = time.perf_counter(), 0
    try:
        while step < last_step:
            state, step_metrics = train_step(state, next_input(), shape_model)
            step += 1
            window_steps += 1
            epoch = step // steps_per_epoch
            log_now, evaluate_now, save_now = due(step, steps_per_epoch, last_step, config)
            if log_now:
                # Metrics reach the host only here, so steps between logs stay asynchronous.
                # Every evaluation and save happens on such a step, after this check; a
                # non-finite loss or gradient leaves NaN parameters behind, so it is never missed.
                values = {key: float(value) for key, value in host_copy(step_metrics).items()}
                # After host_copy, which waits for the step: before it, only dispatch is timed.
                elapsed = time.perf_counter() - window_start
                if not (math.isfinite(values["total"]) and math.isfinite(values["grad_norm"])):
                    raise TrainingDiverged(
                        f"the loss became {values['total']} (gradient norm {values['grad_norm']};"
                        f" found at step {step}, epoch {(step - 1) // steps_per_epoch}, checking "
                        f"every {config.log_every_steps} steps); stopping. The last good "
                        f"checkpoint in {checkpoints.manager.directory} is untouched: lower "
                        "config.optimizer.learning_rate or set config.optimizer.grad_clip and "
                        "resume.")
                values["learning_rate"] = float(schedule(step - 1))
                values["img_per_s"] = window_steps * config.batch_size / max(elapsed, 1e-9)
                logger.scalars(step, values, "train")
                logger.progress(window_steps, {
                    "ep": str(int(values["epoch"])), "loss": _fmt(values["total"]),
                    "mse": _fmt(values["mse"]), "asm": _fmt(values["asm"]),
                    "alpha": _fmt(values["alpha"]), "lr": _fmt(values["learning_rate"]),
                    "img/s": f"{values['img_per_s']:.0f}"})
                window_start, window_steps = time.perf_counter(), 0
            if evaluate_now or save_now:
                val_nme = None
                seconds = {}
                if evaluate_now:
                    start = time.perf_counter()
                    val_summary = validate()
                    seconds["eval_s"] = time.perf_counter() - start
                    val_nme = val_summary["nme"]
                    best_nme = min(best_nme, val_nme)
                    logger.scalars(step, {k: v for k, v in val_summary.items()
                                          if isinstance(v, (int, float))}, "val")
                    logger.write(f"step {step} epoch {epoch}: val NME {val_nme:.3f}% "
                                 f"(best {best_nme:.3f}%), FR {val_summary['fr']:.1f}%")
                if save_now:
                    start = time.perf_counter()
                    checkpoints.save(host_copy(state),
                                     {"step": step, "epoch": epoch, "val_nme": val_nme,
                                     "best_val_nme": best_nme},
                                     val_nme)
                    seconds["save_s"] = time.perf_counter() - start  # the wait; the write
                    # goes on in the background (Checkpoints.save)
                # Where the time between training windows goes (the next window counts it).
                logger.scalars(step, seconds, "time")
    finally:
        logger.close()
        checkpoints.close()

    flip_summary: Dict = {}
    if config.final_flip_eval and step == last_step:
        flip_summary = validate(flip=True)
        if is_main:
            print(f"val NME with flip averaging {flip_summary['nme']:.3f}%, FR "
                  f"{flip_summary['fr']:.1f}%", flush=True)

    summary = {"step": step, "epoch": step / steps_per_epoch, "val_nme": val_summary.get("nme"),
               "val_fr": val_summary.get("fr"), "val_auc": val_summary.get("auc"),
               "best_val_nme": best_nme if math.isfinite(best_nme) else None,
               "val_nme_mean_shape": mean_shape_nme,
               "val_pose_mae": val_summary.get("pose_mae"),
               "val_nme_flip": flip_summary.get("nme"), "val_fr_flip": flip_summary.get("fr"),
               "val_auc_flip": flip_summary.get("auc"),
               "model": config.model, "dataset": config.dataset, "asm_loss": config.asm_loss,
               "input": input_path,
               "devices": jax.device_count(), "processes": process_count,
               "wall_s": time.perf_counter() - wall_start}
    if is_main:
        with atomic_open(os.path.join(workdir, "metrics.json")) as f:
            json.dump(summary, f, indent=2)
    return summary
