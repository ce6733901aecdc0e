"""The paper's MobileNetV2 baseline (mnv2) with the CPU recipe of configs/asmnet_300w_cpu.py, for
the ablation on the 300W faces at hand (experiments/ablation.py --config configs/mnv2_300w_cpu.py).

    asmnet-train --config configs/mnv2_300w_cpu.py --workdir runs/mnv2_300w_cpu

Differences from the ASMNet recipe, as in the paper's baseline: the whole ImageNet MobileNetV2
(blocks 0-16 and the 1280-channel conv) with its 1280-d pool, no dropout, no head penalty, and
the plain landmark loss (mnv2_r: --config.asm_loss=True).
"""

from asmnet_jax.config_base import base_config


def get_config():
    c = base_config()
    # Model and loss.
    c.model = "mnv2"
    c.num_landmarks = 68
    c.asm_loss = False
    c.asm_variance = 0.95
    c.landmark_loss = "l1"
    c.head_l2 = 0.0
    c.bn_momentum = 0.9
    c.head_init = "mean"
    # Starting weights.
    c.init = "imagenet"
    c.init_path = ""
    c.init_bn_images = 512
    c.input_range = "signed"
    # Data.
    c.dataset = "w300"
    c.input_size = 128
    c.num_workers = 0
    # Optimisation.
    c.batch_size = 32
    c.num_epochs = 35
    c.optimizer.name = "adam"
    c.optimizer.learning_rate = 1e-3
    c.optimizer.schedule = "cosine"
    c.optimizer.warmup_epochs = 3.0
    c.seed = 0
    c.final_flip_eval = True
    # Logging, evaluation, checkpoints: every second epoch.
    c.eval_every_epochs = 2
    c.checkpoint_every_epochs = 2
    c.progress_bar = False
    return c
