"""The paper's MobileNetV2 baseline (mnv2: plain MSE, no dropout, no head penalty) on 300W.
mnv2_r (MobileNetV2 + ASM loss): add --config.asm_loss=True."""

from asmnet_jax.config_base import dataset_config


def get_config():
    return dataset_config("w300", "mnv2")
