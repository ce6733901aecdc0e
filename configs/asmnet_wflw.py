"""ASMNet with the ASM loss on WFLW (98 points), at the paper's 224 x 224.

Build the data once:  asmnet-build-data wflw --manual-dir /path/to/WFLW
Train:                asmnet-train --config configs/asmnet_wflw.py --workdir runs/asmnet_wflw

The recipe is :func:`asmnet_jax.recipes.paper_recipe`, the settings the 300W recipe study found
best (experiments/results/study_300w_cpu.md): the backbone from the ImageNet MobileNetV2 weights
(the Keras file in ~/.keras/models, or --config.init_path=FILE) with its BatchNorms re-estimated,
[-1, 1] input, the absolute-error (L1) landmark loss, BN momentum 0.9, Adam with warm-up and a
cosine decay, and a weight average that is evaluated and saved; the paper's 224 x 224 input and
95 % ASM, 150 epochs of batch 64. This file sets the network (ASMNet: head penalty 0.01, dropout
0.3), the ASM term and the dataset; it evaluates and saves every epoch (the schema's default). Not
yet trained here.
"""

from asmnet_jax.config_base import base_config
from asmnet_jax.recipes import paper_recipe


def get_config():
    c = paper_recipe(base_config())
    c.model = "asmnet"
    c.asm_loss = True
    c.head_l2 = 0.01
    c.dropout_rate = 0.3
    c.dataset = "wflw"
    c.num_landmarks = 98
    return c
