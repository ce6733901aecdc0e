"""ASMNet with the ASM loss on 300W (68 points).

Build the data once:  asmnet-build-data w300 --manual-dir /path/to/300W
Train:                asmnet-train --config configs/asmnet_300w.py --workdir runs/asmnet_300w
ASMNet_nr (plain MSE): add --config.asm_loss=False.
The authors' recipe:   --config.optimizer.schedule=authors_cyclic --config.optimizer.learning_rate=1e-2
                       --config.batch_size=70 --config.num_epochs=150
"""

from asmnet_jax.config_base import dataset_config


def get_config():
    return dataset_config("w300", "asmnet")
