"""The paper's MobileNetV2 baseline (mnv2) on WFLW (98 points)."""

from asmnet_jax.config_base import dataset_config


def get_config():
    return dataset_config("wflw", "mnv2")
