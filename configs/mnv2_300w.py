"""The paper's MobileNetV2 baseline (mnv2) on 300W (68 points), at 224 x 224.

    asmnet-train --config configs/mnv2_300w.py --workdir runs/mnv2_300w

The whole ImageNet MobileNetV2 (blocks 0-16 and the 1280-channel conv), no dropout, no head
penalty, the landmark loss alone; mnv2_r (with the ASM loss): add --config.asm_loss=True.

The recipe is :func:`asmnet_jax.recipes.paper_recipe`, the settings the 300W recipe study found
best (experiments/results/study_300w_cpu.md): the backbone from the ImageNet MobileNetV2 weights
(the Keras file in ~/.keras/models, or --config.init_path=FILE) with its BatchNorms re-estimated,
[-1, 1] input, the absolute-error (L1) landmark loss, BN momentum 0.9, Adam with warm-up and a
cosine decay, and a weight average that is evaluated and saved; the paper's 224 x 224 input and
95 % ASM, 150 epochs of batch 64. This file sets the network, drops the ASM term and the head
penalty, and sets the dataset; it evaluates and saves every epoch (the schema's default). Not yet
trained here.
"""

from asmnet_jax.config_base import base_config
from asmnet_jax.recipes import paper_recipe


def get_config():
    c = paper_recipe(base_config())
    c.model = "mnv2"
    c.asm_loss = False
    c.head_l2 = 0.0
    c.dataset = "w300"
    c.num_landmarks = 68
    return c
