"""ASMNet with the ASM loss on 300W (68 points), at the paper's 224 x 224.

Build the data once:  asmnet-build-data w300 --manual-dir /path/to/300W
Train:                asmnet-train --config configs/asmnet_300w.py --workdir runs/asmnet_300w
ASMNet_nr (no ASM loss): add --config.asm_loss=False.
The authors' recipe (from scratch, squared error, triangular cyclic learning rate): add
  --config.init=scratch --config.input_range=unit --config.landmark_loss=l2
  --config.optimizer.schedule=authors_cyclic --config.optimizer.learning_rate=1e-2
  --config.batch_size=70 --config.bn_momentum=0.999 --config.head_init=keras --config.ema_decay=0

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
    c.model = "asmnet"
    c.num_landmarks = 68
    c.asm_loss = True
    c.asm_variance = 0.95
    c.landmark_loss = "l1"
    c.head_l2 = 0.01
    c.dropout_rate = 0.3
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
    # Evaluated every epoch (10 ms on a GPU), saved every 5: on an H200 at batch 256 an epoch of
    # 300W is 7 steps (0.2 s) and one save writes ~800 arrays (1.1-1.3 s), so saving every epoch
    # made the 150 epochs take 238 s instead of ~100 (experiments/RESULTS.md, GPU loop).
    c.eval_every_epochs = 1
    c.checkpoint_every_epochs = 5
    return c
