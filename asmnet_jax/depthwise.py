"""The 3x3 depthwise convolution used by the inverted-residual blocks.

XLA compiles ``lax.conv_general_dilated(..., feature_group_count=C)`` on the CPU into a slow
generic loop (20-150x slower than oneDNN). Written as nine shifted multiply-adds, the same
operation fuses into a single elementwise loop and runs several times faster, forward and backward,
with the same values. On GPU and TPU the native grouped convolution is the fast one.

``depthwise_conv3x3(x, kernel, strides, impl)`` picks the form:

* ``"auto"`` (default): the shift-add form when compiled for the CPU, the native grouped convolution
  on every other platform. The choice is made per platform at lowering time
  (``lax.platform_dependent``), so one traced function serves both.
* ``"shift"``: always the shift-add form.
* ``"xla"``: always ``lax.conv_general_dilated`` with ``feature_group_count``.

Layouts: ``x`` is NHWC, ``kernel`` is (3, 3, 1, C) (HWIO with one input channel per group, the
layout of ``flax.linen.Conv(feature_group_count=C)``). Padding is XLA ``SAME``, which equals the
Keras MobileNetV2 padding (``same`` for stride 1, zero-pad (0, 1) then ``valid`` for stride 2 on
even sizes).
"""

from __future__ import annotations

from functools import partial

import jax.numpy as jnp
from jax import lax

IMPLS = ("auto", "shift", "xla")


def _same_padding(size: int, stride: int, kernel: int = 3):
    out = -(-size // stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return out, (total // 2, total - total // 2)


def depthwise_conv3x3_xla(x, kernel, strides: int = 1):
    """Native grouped convolution: (B, H, W, C), (3, 3, 1, C) -> (B, H', W', C)."""
    return lax.conv_general_dilated(
        x, kernel, window_strides=(strides, strides), padding="SAME",
        dimension_numbers=("NHWC", "HWIO", "NHWC"), feature_group_count=x.shape[-1])


def depthwise_conv3x3_shift(x, kernel, strides: int = 1):
    """Nine shifted multiply-adds: (B, H, W, C), (3, 3, 1, C) -> (B, H', W', C).

    Same values as :func:`depthwise_conv3x3_xla` up to float rounding (the nine products are summed
    in a fixed order); gradients come from JAX's autodiff of pad, strided slice and multiply.
    """
    b, h, w, c = x.shape
    out_h, pad_h = _same_padding(h, strides)
    out_w, pad_w = _same_padding(w, strides)
    xp = jnp.pad(x, ((0, 0), pad_h, pad_w, (0, 0)))
    taps = kernel[:, :, 0, :].astype(x.dtype)
    out = None
    for i in range(3):
        for j in range(3):
            window = lax.slice(
                xp, (0, i, j, 0),
                (b, i + (out_h - 1) * strides + 1, j + (out_w - 1) * strides + 1, c),
                (1, strides, strides, 1))
            term = window * taps[i, j]
            out = term if out is None else out + term
    return out


def depthwise_conv3x3(x, kernel, strides: int = 1, impl: str = "auto"):
    """3x3 depthwise convolution, SAME padding. See the module docstring for ``impl``."""
    if strides not in (1, 2):
        raise ValueError(f"depthwise stride must be 1 or 2, got {strides}")
    if kernel.shape != (3, 3, 1, x.shape[-1]):
        raise ValueError(f"depthwise kernel must be (3, 3, 1, {x.shape[-1]}), got {kernel.shape}")
    if impl == "shift":
        return depthwise_conv3x3_shift(x, kernel, strides)
    if impl == "xla":
        return depthwise_conv3x3_xla(x, kernel, strides)
    if impl == "auto":
        return lax.platform_dependent(
            x, kernel,
            cpu=partial(depthwise_conv3x3_shift, strides=strides),
            default=partial(depthwise_conv3x3_xla, strides=strides))
    raise ValueError(f"depthwise impl must be one of {IMPLS}, got {impl!r}")
