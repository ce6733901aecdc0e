"""The 3x3 depthwise convolution used by the inverted-residual blocks.

XLA compiles ``lax.conv_general_dilated(..., feature_group_count=C)`` on the CPU into a slow
generic loop (20-150x slower than oneDNN). Written as nine shifted multiply-adds, the same
operation fuses into a single elementwise loop and runs several times faster, forward and backward,
with the same values. On GPU the native grouped convolution (cuDNN) is the fast one in bfloat16;
in float32, XLA's autotuner picks cuDNN's slow generic grouped kernel for some of ASMNet's layers
(the 384-channel 14 x 14 ones and a stride-2 one: 9 of 32 forward and input-gradient
convolutions, 23 % of the float32 step on an H200), and the shift-add forward and input gradient
with cuDNN's filter gradient run the step 21 % faster (experiments/RESULTS.md).

``depthwise_conv3x3(x, kernel, strides, impl)`` picks the form (and ``conv3x3``, the stem's full
3x3 convolution, picks between one matrix product over patches and XLA's convolution the same
way):

* ``"auto"`` (default): chosen per platform at lowering time (``lax.platform_dependent``), so one
  traced function serves all: the shift-add form on the CPU; on CUDA GPUs ``"mixed"`` in float32
  and the native grouped convolution in other dtypes; the native grouped convolution elsewhere
  (:func:`auto_forms`).
* ``"shift"``: always the shift-add form.
* ``"xla"``: always ``lax.conv_general_dilated`` with ``feature_group_count``.
* ``"mixed"``: the shift-add forward and input gradient, XLA's convolution for the filter gradient
  (the stem's convolution: XLA's).

Layouts: ``x`` is NHWC, ``kernel`` is (3, 3, 1, C) (HWIO with one input channel per group, the
layout of ``flax.linen.Conv(feature_group_count=C)``). Padding is XLA ``SAME``, which equals the
Keras MobileNetV2 padding (``same`` for stride 1, zero-pad (0, 1) then ``valid`` for stride 2 on
even sizes).
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
from jax import custom_vjp, lax

IMPLS = ("auto", "shift", "xla", "mixed")


def _same_padding(size: int, stride: int, kernel: int = 3):
    out = -(-size // stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return out, (total // 2, total - total // 2)


def depthwise_conv3x3_xla(x, kernel, strides: int = 1):
    """Native grouped convolution: (B, H, W, C), (3, 3, 1, C) -> (B, H', W', C)."""
    return lax.conv_general_dilated(
        x, kernel, window_strides=(strides, strides), padding="SAME",
        dimension_numbers=("NHWC", "HWIO", "NHWC"), feature_group_count=x.shape[-1])


def _window(xp, i: int, j: int, out_h: int, out_w: int, strides: int):
    """xp[:, s*o + i, s*p + j, :] for o < out_h, p < out_w: the input under kernel tap (i, j)."""
    b, _, _, c = xp.shape
    return lax.slice(xp, (0, i, j, 0),
                     (b, i + (out_h - 1) * strides + 1, j + (out_w - 1) * strides + 1, c),
                     (1, strides, strides, 1))


def _shift_add(xp, taps, out_h: int, out_w: int, strides: int):
    """sum_ij xp[:, s*o + i, s*p + j, :] * taps[i, j]: nine strided windows of the padded input."""
    out = None
    for i in range(3):
        for j in range(3):
            term = _window(xp, i, j, out_h, out_w, strides) * taps[i, j]
            out = term if out is None else out + term
    return out


def depthwise_conv3x3_shift_autodiff(x, kernel, strides: int = 1):
    """Nine shifted multiply-adds, differentiated by JAX's autodiff of pad, slice and multiply.

    The reference for :func:`depthwise_conv3x3_shift` (same forward). Its backward materialises the
    nine (strided) windows of the padded input as separate arrays and pads nine cotangent-sized
    arrays back to the input size, which makes it about 4x slower than the forward on the CPU.
    """
    _, h, w, _ = x.shape
    out_h, pad_h = _same_padding(h, strides)
    out_w, pad_w = _same_padding(w, strides)
    xp = jnp.pad(x, ((0, 0), pad_h, pad_w, (0, 0)))
    return _shift_add(xp, kernel[:, :, 0, :].astype(x.dtype), out_h, out_w, strides)


@partial(custom_vjp, nondiff_argnums=(2,))
def depthwise_conv3x3_shift(x, kernel, strides: int = 1):
    """Nine shifted multiply-adds: (B, H, W, C), (3, 3, 1, C) -> (B, H', W', C).

    Same values as :func:`depthwise_conv3x3_xla` up to float rounding (the nine products are summed
    in a fixed order). The gradient is written out (``custom_vjp``) rather than left to autodiff:

    * input gradient: the transposed convolution, itself a shift-add: the cotangent, dilated by the
      stride and padded, correlated with the spatially flipped kernel (one fused loop);
    * kernel gradient: nine reductions over (B, H', W') of a window of the padded input times the
      cotangent, from the saved input instead of nine saved windows, as one variadic reduction
      over W' (one pass over the input and the cotangent) followed by small sums over (B, H').
    """
    return depthwise_conv3x3_shift_autodiff(x, kernel, strides)


def _shift_forward(x, kernel, strides):
    return depthwise_conv3x3_shift_autodiff(x, kernel, strides), (x, kernel)


def _shift_input_grad(x_shape, kernel, g, strides):
    """The input gradient of the shift-add form: the transposed convolution, itself a shift-add.

    dx[u] = sum_i gd[u + pad_lo - i] k[i], gd = g dilated by the stride; with i' = 2 - i that is a
    stride-1 valid shift-add over gd padded by 2 - pad_lo in front (one fused loop).
    """
    _, h, w, _ = x_shape
    out_h, pad_h = _same_padding(h, strides)
    out_w, pad_w = _same_padding(w, strides)

    def dilated_padding(size, out, pad):
        low = 2 - pad[0]
        return (low, size + 2 - low - ((out - 1) * strides + 1), strides - 1)

    gp = lax.pad(g, jnp.zeros((), g.dtype),
                 ((0, 0, 0), dilated_padding(h, out_h, pad_h), dilated_padding(w, out_w, pad_w),
                  (0, 0, 0)))
    flipped = kernel[::-1, ::-1, 0, :].astype(g.dtype)
    return _shift_add(gp, flipped, h, w, 1)


def _shift_backward(strides, residuals, g):
    x, kernel = residuals
    _, h, w, _ = x.shape
    out_h, pad_h = _same_padding(h, strides)
    out_w, pad_w = _same_padding(w, strides)
    g = g.astype(x.dtype)
    dx = _shift_input_grad(x.shape, kernel, g, strides)
    # Kernel gradient: dk[i, j] = sum over (b, o, p) of xp[b, s*o + i, s*p + j] * g[b, o, p].
    # The nine sums are one variadic reduction over p (a single fused loop over xp and g that
    # never materialises the windows), then nine small sums over (b, o).
    xp = jnp.pad(x, ((0, 0), pad_h, pad_w, (0, 0)))
    c = x.shape[-1]
    acc = jnp.promote_types(x.dtype, jnp.float32)
    g_acc = g.astype(acc)
    products = [_window(xp, i, j, out_h, out_w, strides).astype(acc) * g_acc
                for i in range(3) for j in range(3)]
    zero = jnp.zeros((), acc)
    rows = lax.reduce(products, [zero] * 9, lambda a, b: [u + v for u, v in zip(a, b)], (2,))
    dk = jnp.stack([jnp.sum(r, axis=(0, 1)) for r in rows]).reshape(3, 3, 1, c)
    dk = dk.astype(kernel.dtype)
    return dx, dk


depthwise_conv3x3_shift.defvjp(_shift_forward, _shift_backward)


@partial(custom_vjp, nondiff_argnums=(2,))
def depthwise_conv3x3_mixed(x, kernel, strides: int = 1):
    """The shift-add forward and input gradient, with the filter gradient by XLA's convolution.

    Same values as :func:`depthwise_conv3x3_shift` and :func:`depthwise_conv3x3_xla` up to float
    rounding.
    """
    return depthwise_conv3x3_shift_autodiff(x, kernel, strides)


def _mixed_backward(strides, residuals, g):
    x, kernel = residuals
    g = g.astype(x.dtype)
    dx = _shift_input_grad(x.shape, kernel, g, strides)
    _, kernel_vjp = jax.vjp(lambda k: depthwise_conv3x3_xla(x, k.astype(x.dtype), strides), kernel)
    (dk,) = kernel_vjp(g)
    return dx, dk.astype(kernel.dtype)


depthwise_conv3x3_mixed.defvjp(_shift_forward, _mixed_backward)


def _by_impl(impl: str, what: str, x, kernel, forms: dict, auto: dict):
    """``forms[impl](x, kernel)``; for ``"auto"``, the form that ``auto`` names for the platform
    compiled for (its ``"default"`` entry for the others), chosen at lowering time with
    ``lax.platform_dependent``."""
    if impl == "auto":
        return lax.platform_dependent(x, kernel,
                                      **{platform: forms[name] for platform, name in auto.items()})
    if impl not in forms:
        raise ValueError(f"{what} impl must be one of {IMPLS}, got {impl!r}")
    return forms[impl](x, kernel)


def depthwise_conv3x3(x, kernel, strides: int = 1, impl: str = "auto"):
    """3x3 depthwise convolution, SAME padding. See the module docstring for ``impl``."""
    if strides not in (1, 2):
        raise ValueError(f"depthwise stride must be 1 or 2, got {strides}")
    if kernel.shape != (3, 3, 1, x.shape[-1]):
        raise ValueError(f"depthwise kernel must be (3, 3, 1, {x.shape[-1]}), got {kernel.shape}")
    forms = {"shift": partial(depthwise_conv3x3_shift, strides=strides),
             "xla": partial(depthwise_conv3x3_xla, strides=strides),
             "mixed": partial(depthwise_conv3x3_mixed, strides=strides)}
    return _by_impl(impl, "depthwise", x, kernel, forms, auto=auto_forms(x.dtype))


def auto_forms(dtype) -> dict:
    """What ``"auto"`` picks for a depthwise convolution computed in ``dtype``, per platform."""
    on_cuda = "mixed" if jnp.dtype(dtype) == jnp.float32 else "xla"
    return {"cpu": "shift", "cuda": on_cuda, "default": "xla"}


def resolve_impl(impl: str, dtype, backend: str | None = None) -> str:
    """``impl`` with ``"auto"`` replaced by the form it picks on ``backend`` (default: JAX's
    default backend) for ``dtype``, for programs compiled for that backend only (training,
    evaluation, prediction): ``lax.platform_dependent`` traces every platform's form, which
    doubles the tracing time of a train step. On GPUs, whose choice depends on the lowering
    platform (CUDA or ROCm), ``"auto"`` stays. Same values either way."""
    if impl != "auto":
        return impl
    backend = backend or jax.default_backend()
    if backend == "gpu":
        return impl
    forms = auto_forms(dtype)
    return forms.get(backend, forms["default"])


# ----------------------------------------------------------------------------------------------
# The stem's full 3x3 convolution


def conv3x3_as_dot(x, kernel, strides: int = 1):
    """3x3 convolution with SAME padding as one matrix product over the image's patches.

    ``x`` (B, H, W, C), ``kernel`` (3, 3, C, F) HWIO. The nine strided windows of the padded input
    are stacked on the channel axis in HWIO order, (B, H', W', 9 C), and multiplied by the kernel
    reshaped to (9 C, F). For the stem (C = 3) the patch array is small, and the filter gradient
    becomes one product over (B * H' * W', 27) instead of the convolution over transposed copies
    that XLA's CPU backend emits for a convolution's filter gradient.
    """
    b, h, w, c = x.shape
    out_h, pad_h = _same_padding(h, strides)
    out_w, pad_w = _same_padding(w, strides)
    xp = jnp.pad(x, ((0, 0), pad_h, pad_w, (0, 0)))
    patches = jnp.concatenate([_window(xp, i, j, out_h, out_w, strides)
                               for i in range(3) for j in range(3)], axis=-1)
    y = lax.dot_general(patches.reshape(-1, 9 * c), kernel.reshape(9 * c, -1),
                        (((1,), (0,)), ((), ())))
    return y.reshape(b, out_h, out_w, kernel.shape[-1])


def conv3x3_xla(x, kernel, strides: int = 1):
    """XLA's convolution: (B, H, W, C), (3, 3, C, F) -> (B, H', W', F), SAME padding."""
    return lax.conv_general_dilated(x, kernel, (strides, strides), "SAME",
                                    dimension_numbers=("NHWC", "HWIO", "NHWC"))


def conv3x3(x, kernel, strides: int = 1, impl: str = "auto"):
    """3x3 convolution, SAME padding; ``impl`` as for :func:`depthwise_conv3x3` ("shift" and the
    CPU under "auto": :func:`conv3x3_as_dot`; "xla", "mixed" and other platforms:
    :func:`conv3x3_xla`)."""
    if kernel.shape[:3] != (3, 3, x.shape[-1]):
        raise ValueError(f"3x3 kernel must be (3, 3, {x.shape[-1]}, F), got {kernel.shape}")
    as_dot, xla = partial(conv3x3_as_dot, strides=strides), partial(conv3x3_xla, strides=strides)
    return _by_impl(impl, "3x3 convolution", x, kernel,
                    {"shift": as_dot, "xla": xla, "mixed": xla},
                    auto={"cpu": "shift", "default": "xla"})
