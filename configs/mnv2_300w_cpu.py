"""The paper's MobileNetV2 baseline (mnv2) with the CPU recipe of configs/asmnet_300w_cpu.py.

    asmnet-train --config configs/mnv2_300w_cpu.py --workdir runs/mnv2_300w_cpu

Everything is the ASMNet CPU recipe (:func:`asmnet_jax.recipes.cpu_recipe`) except what makes the
paper's baseline: the whole ImageNet MobileNetV2 (blocks 0-16 and the 1280-channel conv) with its
1280-d pool, no dropout, no head penalty, and the plain landmark loss (mnv2_r:
--config.asm_loss=True). Its ablation cells (8 epochs): experiments/results/ablation_300w_cpu.md.
"""

from asmnet_jax.config_base import base_config
from asmnet_jax.recipes import cpu_recipe


def get_config():
    c = cpu_recipe(base_config())
    c.model = "mnv2"
    c.asm_loss = False
    c.head_l2 = 0.0
    c.dataset = "w300"
    c.num_landmarks = 68
    return c
