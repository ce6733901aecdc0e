"""The paper's MobileNetV2 baseline (mnv2) with the CPU recipe of configs/asmnet_300w_cpu.py.

    asmnet-train --config configs/mnv2_300w_cpu.py --workdir runs/mnv2_300w_cpu

Everything is the ASMNet recipe (read from that file) except what makes the paper's baseline:
the whole ImageNet MobileNetV2 (blocks 0-16 and the 1280-channel conv) with its 1280-d pool, no
dropout, no head penalty, and the plain landmark loss (mnv2_r: --config.asm_loss=True).
"""

import importlib.util
import os


def _asmnet_recipe():
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "asmnet_300w_cpu.py")
    spec = importlib.util.spec_from_file_location("asmnet_300w_cpu", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()


def get_config():
    c = _asmnet_recipe()
    c.model = "mnv2"
    c.asm_loss = False
    c.head_l2 = 0.0
    return c
