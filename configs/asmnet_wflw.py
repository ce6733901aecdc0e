"""ASMNet with the ASM loss on WFLW (98 points).

Build the data once:  asmnet-build-data wflw --manual-dir /path/to/WFLW
Train:                asmnet-train --config configs/asmnet_wflw.py --workdir runs/asmnet_wflw
"""

from asmnet_jax.config_base import dataset_config


def get_config():
    return dataset_config("wflw", "asmnet")
