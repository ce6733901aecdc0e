"""The training configuration schema: every key a config may set, and its default.

Experiment files in ``configs/`` start from :func:`base_config` and change what they need;
:func:`default_config` is the run ``asmnet-train`` makes without ``--config``. The
config is locked before training, so a command-line override of a key that does not exist
(``--config.learning_rate=...`` instead of ``--config.optimizer.learning_rate=...``) fails at start.
"""

import difflib
from typing import Iterator, Optional

import jax
import ml_collections

from asmnet_jax import landmarks as lm
from asmnet_jax.data.augment import AugmentConfig
from asmnet_jax.depthwise import IMPLS
from asmnet_jax.errors import AsmnetError
from asmnet_jax.init import INITS
from asmnet_jax.losses import LANDMARK_LOSSES
from asmnet_jax.models import DTYPES, INPUT_RANGES, MODELS

#: The landmark count of each named data set (synthetic faces come in both markups).
DATASET_LANDMARKS = {"w300": 68, "wflw": 98}
SCHEDULES = ("cosine", "constant", "authors_cyclic")
#: Where training batches are made (config.input; asmnet_jax/data/inputs.py).
INPUTS = ("auto", "device", "host")


class ConfigError(AsmnetError, ValueError):
    """A configuration key with a bad value; the message names the key."""


def base_config() -> ml_collections.ConfigDict:
    """Every key a training config may set, with the offline synthetic defaults."""
    c = ml_collections.ConfigDict()
    # Model and loss.
    c.model = "asmnet"            # "asmnet" or "mnv2" (the paper's baseline)
    c.num_landmarks = 68
    c.asm_loss = True             # False: plain MSE (ASMNet_nr, mnv2)
    c.asm_variance = 0.90         # PCA accuracy of the shape model (paper's sweep: 0.80 .. 0.97)
    c.landmark_loss = "l2"        # "l2" (the paper's squared error), "l1" (absolute) or "wing"
    # The Wing loss's width and curvature (landmark_loss="wing"), in the model's units (fractions
    # of the crop side): the paper's 10 and 2 pixels at a 128-pixel input.
    c.wing_width = 10.0 / 128.0
    c.wing_epsilon = 2.0 / 128.0
    c.head_l2 = 0.01              # L2 on both heads, Keras convention (0 disables)
    # Distillation (beyond the paper): a trained teacher (a training workdir, whose best
    # checkpoint is taken, WORKDIR/checkpoints/STEP, a model directory or a shipped model's name;
    # "" = off) predicts landmarks and pose on the same augmented batch the student trains on,
    # and distill_weight * (landmark distance under landmark_loss + 0.5 * pose MSE) to its
    # predictions is added to the loss. The teacher must have num_landmarks points; a teacher of
    # another input size sees the student's crops resized on the device (bilinear).
    c.distill_teacher = ""
    c.distill_weight = 1.0
    c.dropout_rate = 0.3          # ASMNet only
    c.dtype = "float32"           # compute dtype: "float32" or "bfloat16" (params stay float32)
    c.depthwise_impl = "auto"     # "auto", "shift", "xla" or "mixed" (asmnet_jax.depthwise)
    # BN running-average momentum. Keras uses 0.999; its running variances then need thousands of
    # steps to leave their initial 1, while the depthwise layers' true variances start near 1e-3:
    # evaluation of a short run collapses. 0.9 as in Flax's ImageNet example.
    c.bn_momentum = 0.9
    # Head initialisation: "keras" (glorot kernels, zero biases) or "mean" (kernels scaled by 0.1,
    # biases set to the training set's mean landmarks and pose): regression targets of std ~0.1
    # are then not swamped by initial outputs of std ~1, which Adam needs ~100 steps to shrink.
    c.head_init = "mean"
    # Starting weights of a fresh run (asmnet_jax/init.py): "scratch", "imagenet" (the Keras
    # MobileNetV2 ImageNet file; init_path "" = Keras' cache, ~/.keras/models) or "checkpoint"
    # (init_path: a training workdir, WORKDIR/checkpoints/STEP or a model directory).
    c.init = "scratch"
    c.init_path = ""
    # BN re-estimation over this many training crops before training from ImageNet weights
    # (needed for files whose BNs are folded into the convolutions; 0 = off).
    c.init_bn_images = 512
    # "unit": the stem sees the [0, 1] images (the authors' models); "signed": the model maps
    # them to [-1, 1] first, the range ImageNet MobileNetV2 was trained on (init="imagenet").
    c.input_range = "unit"

    # Data.
    c.dataset = "synthetic"       # "synthetic", "w300" or "wflw" (TFDS, built by asmnet-build-data)
    c.data_dir = ""               # TFDS data directory ("" = TFDS default)
    c.train_split = "train"
    c.val_split = "validation"
    c.synthetic = ml_collections.ConfigDict(dict(train=1600, validation=200, seed=0))
    c.input_size = 64
    c.margin = 0.1                # face box margin on each side, fraction of its side
    c.augment = ml_collections.ConfigDict(AugmentConfig().to_dict())
    c.num_workers = 0             # grain worker processes (0: in the training process)
    # Where training batches are made (asmnet_jax/data/inputs.py): "device" holds the stored
    # crops in device memory and augments inside the jitted step; "host" decodes and augments
    # them on the host with grain and OpenCV; "auto" is "device" when one device's shard of the
    # training set takes at most a quarter of its memory, else "host".
    c.input = "auto"
    # A folder of portable exports (asmnet-build-data ... --npz DIR writes DIR/DATASET/SPLIT.npz):
    # read instead of the TFDS dataset, so that training needs no TensorFlow ("" = TFDS).
    c.arrays_dir = ""

    # Optimisation.
    c.batch_size = 32             # global batch, split over all devices and hosts
    c.num_epochs = 10
    c.max_steps = -1              # > 0: stop after this many steps (tests, quick checks)
    c.optimizer = ml_collections.ConfigDict(dict(
        name="adam",              # "adam", "adamw" or "sgd" (momentum b1)
        learning_rate=2e-3,
        schedule="cosine",        # "cosine" (warm-up then cosine), "constant", "authors_cyclic"
        warmup_epochs=1.0,
        weight_decay=0.0,         # adamw only
        b1=0.9, b2=0.999,
        grad_clip=0.0,            # > 0: clip the global gradient norm
        # The authors' recipe (schedule="authors_cyclic"): triangular cycles between
        # cyclic_min_lr and learning_rate, half a cycle every cyclic_half_cycle_epochs, and
        # Keras time decay lr / (1 + time_decay * step).
        cyclic_min_lr=1e-7, cyclic_half_cycle_epochs=10.0, time_decay=1e-5,
    ))
    # > 0: keep an exponential moving average of the weights and BN statistics (this decay per
    # step, less in the first steps) and evaluate and save it as the model; 0: off.
    c.ema_decay = 0.0
    c.seed = 0

    # Logging, evaluation, checkpoints.
    c.log_every_steps = 20
    c.eval_every_epochs = 1
    # Also report the validation NME with test-time flip averaging after the last step
    # (val_nme_flip in metrics.json; one more compilation).
    c.final_flip_eval = False
    c.checkpoint_every_epochs = 1
    c.keep_checkpoints = 3        # the latest K are kept, plus the best by validation NME
    c.progress_bar = True
    return c


def config_keys(config: Optional[ml_collections.ConfigDict] = None, prefix: str = "") -> Iterator[str]:
    """Every leaf key of ``config`` (default: the schema), dotted: ``optimizer.learning_rate``."""
    config = base_config() if config is None else config
    for key in config.keys():
        if isinstance(config[key], ml_collections.ConfigDict):
            yield from config_keys(config[key], f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}"


def closest_key(name: str) -> Optional[str]:
    """The schema key a misspelt or misplaced ``name`` most likely meant, or None."""
    keys = list(config_keys())
    leaf = name.rsplit(".", 1)[-1]
    same_leaf = [k for k in keys if k.rsplit(".", 1)[-1] == leaf]
    if same_leaf:
        return same_leaf[0]
    initials = [k for k in keys  # "lr" for learning_rate, "bs" for batch_size
                if "".join(w[:1] for w in k.rsplit(".", 1)[-1].split("_")) == leaf]
    if initials:
        return initials[0]
    close = difflib.get_close_matches(name, keys, n=1, cutoff=0.6)
    if close:
        return close[0]
    leaves = {k.rsplit(".", 1)[-1]: k for k in keys}
    close = difflib.get_close_matches(leaf, list(leaves), n=1, cutoff=0.6)
    return leaves[close[0]] if close else None


def unknown_key_message(name: str) -> str:
    """One line for a key the schema does not have, with the key probably meant."""
    guess = closest_key(name)
    hint = f"; did you mean config.{guess}?" if guess else ""
    return f"unknown config key config.{name}{hint}"


def _check_known_keys(config, reference=None, prefix: str = "") -> None:
    """Rejects the first key of ``config`` the schema does not have, with the key meant."""
    reference = base_config() if reference is None else reference
    for key in config.keys():
        if key not in reference:
            raise ConfigError(unknown_key_message(f"{prefix}{key}"))
        if isinstance(reference[key], ml_collections.ConfigDict):
            _check_known_keys(config[key], reference[key], f"{prefix}{key}.")


def check_config(config: ml_collections.ConfigDict) -> None:
    """Rejects unknown keys and bad values before anything is built, naming the key."""
    _check_known_keys(config)

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
    require(config.wing_width > 0.0, "wing_width", f"{config.wing_width}: must be positive")
    require(config.wing_epsilon > 0.0, "wing_epsilon",
            f"{config.wing_epsilon}: must be positive")
    require(config.input_range in INPUT_RANGES, "input_range",
            f"{config.input_range!r} is not one of {INPUT_RANGES}")
    require(config.init in INITS, "init",
            f"{config.init!r} is not one of {INITS}")
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
    require(config.distill_weight >= 0.0, "distill_weight",
            f"{config.distill_weight} is negative")
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
        AugmentConfig.from_dict(config.augment)
    except (ValueError, TypeError) as err:
        raise ConfigError(str(err).replace("AugmentConfig.", "config.augment.")) from err


def default_config() -> ml_collections.ConfigDict:
    """The offline default run (``asmnet-train`` without ``--config``; ``configs/default.py``):
    ASMNet with the ASM loss on 1,600 synthetic 64 x 64 faces, sized to train in about 5 minutes
    on a 2-core CPU.

    What it changes from the schema's defaults, and why (the 300W study,
    ``experiments/results/study_300w_cpu.md``, and runs of this config on 2026-12-03):

    * ``landmark_loss="l1"``: in 25-epoch runs the paper's squared error ended at 11.1 %
      validation NME, the absolute error at 9.6 % (experiments/RESULTS.md);
    * ``ema_decay=0.99``: evaluate and save the weight average;
    * ``num_epochs=24`` (1,200 steps), evaluated and saved every 4 epochs.
    """
    c = base_config()
    c.landmark_loss = "l1"
    c.ema_decay = 0.99
    c.num_epochs = 24
    c.eval_every_epochs = 4
    c.checkpoint_every_epochs = 4
    return c


def get_config() -> ml_collections.ConfigDict:
    """So that this file is itself a config file: the default of ``asmnet-train --config``."""
    return default_config()
