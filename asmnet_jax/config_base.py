"""The training configuration schema: every key a config may set, and its default.

Experiment files in ``configs/`` start from :func:`base_config` and change what they need;
:func:`default_config` is the run ``asmnet-train`` makes without ``--config``. The
config is locked before training, so a command-line override of a key that does not exist
(``--config.learning_rate=...`` instead of ``--config.optimizer.learning_rate=...``) fails at start.
"""

import difflib
from typing import Iterator, Optional

import ml_collections

from asmnet_jax.data.augment import AugmentConfig


def base_config() -> ml_collections.ConfigDict:
    """Every key a training config may set, with the offline synthetic defaults."""
    c = ml_collections.ConfigDict()
    # Model and loss.
    c.model = "asmnet"            # "asmnet" or "mnv2" (the paper's baseline)
    c.num_landmarks = 68
    c.asm_loss = True             # False: plain MSE (ASMNet_nr, mnv2)
    c.asm_variance = 0.90         # PCA accuracy of the shape model (paper's sweep: 0.80 .. 0.97)
    c.landmark_loss = "l2"        # "l2" (the paper's squared error) or "l1" (absolute error)
    c.head_l2 = 0.01              # L2 on both heads, Keras convention (0 disables)
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
    # Where training batches are made (asmnet_jax/data/resident.py): "device" holds the stored
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
