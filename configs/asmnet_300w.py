"""ASMNet with the ASM loss on 300W (68 points), at the paper's 224 x 224.

Build the data once:  asmnet-build-data w300 --manual-dir /path/to/300W
Train:                asmnet-train --config configs/asmnet_300w.py --workdir runs/asmnet_300w
ASMNet_nr (no ASM loss): add --config.asm_loss=False.
The authors' recipe (from scratch, squared error, triangular cyclic learning rate): add
  --config.init=scratch --config.input_range=unit --config.landmark_loss=l2
  --config.optimizer.schedule=authors_cyclic --config.optimizer.learning_rate=1e-2
  --config.batch_size=70 --config.bn_momentum=0.999 --config.head_init=keras --config.ema_decay=0

The recipe is :func:`asmnet_jax.recipes.paper_recipe`, the settings the 300W recipe study found
best (experiments/results/study_300w_cpu.md): the backbone from the ImageNet MobileNetV2 weights
(the Keras file in ~/.keras/models, or --config.init_path=FILE) with its BatchNorms re-estimated,
[-1, 1] input, the absolute-error (L1) landmark loss, BN momentum 0.9, Adam with warm-up and a
cosine decay, and a weight average that is evaluated and saved; the paper's 224 x 224 input and
95 % ASM, 150 epochs of batch 64. This file sets the network (ASMNet: head penalty 0.01, dropout
0.3), the ASM term, the dataset, and evaluation every epoch with a save every 5 epochs.

Result: its 150 epochs took 130.5 s end to end on an H200 (bf16, batch 256, random stand-in
faces: a timing, not an accuracy; experiments/RESULTS.md, GPU loop). It has not been trained on
the full 300W here.
"""

from asmnet_jax.config_base import base_config
from asmnet_jax.recipes import paper_recipe


def get_config():
    c = paper_recipe(base_config())
    c.model = "asmnet"
    c.asm_loss = True
    c.head_l2 = 0.01
    c.dropout_rate = 0.3
    c.dataset = "w300"
    c.num_landmarks = 68
    # Evaluated every epoch (10 ms on a GPU), saved every 5: on an H200 at batch 256 an epoch of
    # 300W is 7 steps (0.2 s) and one save writes ~800 arrays (1.1-1.3 s), so saving every epoch
    # made the 150 epochs take 238 s instead of ~100 (experiments/RESULTS.md, GPU loop).
    c.eval_every_epochs = 1
    c.checkpoint_every_epochs = 5
    return c
