"""ASMNet on the 300W faces at hand, the best model a 2-core CPU trains in at most 45 minutes.

Build the data once, then train (the validation split is carved out of the training faces):

    asmnet-build-data w300 --manual-dir /path/to/300W --data-dir ~/tensorflow_datasets
    asmnet-train --config configs/asmnet_300w_cpu.py --workdir runs/asmnet_300w_cpu

The recipe is :func:`asmnet_jax.recipes.cpu_recipe`: the paper-scale recipe
(:func:`~asmnet_jax.recipes.paper_recipe`: ImageNet MobileNetV2 weights, the Keras file in
~/.keras/models or --config.init_path=FILE, with its BatchNorms re-estimated on training crops;
L1 loss, Adam with warm-up and cosine decay) at 128 px, batch 32, 34 epochs, on the host input
pipeline, with a weight average (0.995) evaluated and saved every second epoch. This file sets
the network (ASMNet: head penalty 0.01, dropout 0.3), the ASM term and the dataset. The settings
come from the study in experiments/study.py (experiments/results/study_300w_cpu.md).

Result: on 2026-12-04 this file trained in 31 min 35 s to 4.47 % validation NME (4.42 % with flip
averaging), at about 45 img/s. On a slower day of this CPU (27 img/s) the 34 epochs take about 39
minutes; on a faster machine of the same kind (2026-12-04, 58 img/s) the device input path took
17 minutes. On 2026-12-07, after the one-path refactor (--config.data_dir=/work/tfds
--config.init_path=FILE), it trained in 26 min 21 s on a CPU shared with other work to 4.49 %
(4.43 % with flip), FR 0.5 %.
"""

from asmnet_jax.config_base import base_config
from asmnet_jax.recipes import cpu_recipe


def get_config():
    c = cpu_recipe(base_config())
    c.model = "asmnet"
    c.asm_loss = True
    c.head_l2 = 0.01
    c.dropout_rate = 0.3
    c.dataset = "w300"
    c.num_landmarks = 68
    return c
