"""ASMNet with the ASM loss on WFLW (98 points).

Build the data once:  asmnet-build-data wflw --manual-dir /path/to/WFLW
Train:                asmnet-train --config configs/asmnet_wflw.py --workdir runs/asmnet_wflw
"""

from asmnet_jax.config_base import base_config


def get_config():
    c = base_config()
    c.input_size = 224
    c.batch_size = 64
    c.num_epochs = 150
    c.asm_variance = 0.95
    c.optimizer.learning_rate = 1e-3
    c.optimizer.warmup_epochs = 2.0
    c.num_workers = 4
    c.dataset = "wflw"
    c.num_landmarks = 98
    return c
