"""Datasets and training inputs.

Readers of the official 300W and WFLW layouts (``w300``, ``wflw``, ``splits``), stored examples and
their TFDS builders (``examples``, ``tfds_builders``), pose labels (``pose``, ``face3d``), synthetic
faces (``synthetic``), crop geometry (``crop``, ``geometry``) and augmentation on the host
(``augment``) and on the device (``device_augment``). ``sources`` opens a split (synthetic, TFDS or
a ``.npz`` export) for training and evaluation alike; ``inputs`` gives the train step its batches,
from a set held in device memory (``resident``) or from the host pipeline (``pipeline``, grain).
docs/code.md shows how these fit together."""
