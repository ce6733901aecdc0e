"""ASMNet with the ASM loss on synthetic faces: the offline default, sized for a 2-core CPU.

    asmnet-train --config configs/default.py --workdir /tmp/asmnet_default

Trains on 1,600 synthetic faces rendered once into memory, at 64 x 64: a few minutes on a 2-core
CPU, the validation NME falling far below that of the mean shape. Every key is documented in
asmnet_jax/config_base.py.
"""

from asmnet_jax.config_base import base_config


def get_config():
    return base_config()
