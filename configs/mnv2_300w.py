"""The paper's MobileNetV2 baseline (mnv2) on 300W (68 points), at 224 x 224.

    asmnet-train --config configs/mnv2_300w.py --workdir runs/mnv2_300w

The whole ImageNet MobileNetV2 (blocks 0-16 and the 1280-channel conv), no dropout, no head
penalty, the landmark loss alone; mnv2_r (with the ASM loss): add --config.asm_loss=True.

The settings are those the 300W recipe study found best (experiments/results/study_300w_cpu.md):
the backbone from the ImageNet MobileNetV2 weights (the Keras file in ~/.keras/models, or
--config.init_path=FILE) with its BatchNorms re-estimated, [-1, 1] input, the absolute-error (L1)
landmark loss, BN momentum 0.9, Adam with warm-up and a cosine decay, and a weight average that is
evaluated and saved. The paper's experiments fix 224 x 224 input and the 95 % ASM.
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
    # Starting weights: ImageNet MobileNetV2, BNs re-estimated on 512 training crops.
    c.init = "imagenet"
    c.init_path = ""
    c.init_bn_images = 512
    c.input_range = "signed"
    # Data.
    c.dataset = "w300"
    c.input_size = 224
    # Batches made on the device when the set fits in a quarter of its memory (all of 300W and
    # WFLW on a GPU); else on the host, with 4 grain worker processes.
    c.input = "auto"
    c.num_workers = 4
    # Optimisation.
    c.batch_size = 64
    c.num_epochs = 150
    c.optimizer.name = "adam"
    c.optimizer.learning_rate = 1e-3
    c.optimizer.schedule = "cosine"
    c.optimizer.warmup_epochs = 3.0
    # A weight average over ~1,000 steps (the study averaged its 1,568 steps with 0.995).
    c.ema_decay = 0.999
    c.final_flip_eval = True
    return c
