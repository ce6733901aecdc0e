"""The paper's MobileNetV2 baseline (mnv2) on WFLW (98 points)."""

from asmnet_jax.config_base import base_config


def get_config():
    c = base_config()
    c.dataset = "wflw"
    c.num_landmarks = 98
    c.input_size = 224
    c.batch_size = 64
    c.num_epochs = 150
    c.optimizer.learning_rate = 1e-3
    c.optimizer.warmup_epochs = 2.0
    c.num_workers = 4
    c.model = "mnv2"
    c.asm_loss = False            # mnv2_r: --config.asm_loss=True
    c.asm_variance = 0.95
    c.head_l2 = 0.0
    return c
