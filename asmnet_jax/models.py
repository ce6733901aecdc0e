"""ASMNet and the MobileNetV2 baseline as Flax Linen modules.

Both models take RGB images in [0, 1], shape (B, H, W, 3) with H and W divisible by 32 (with
``input_range="signed"`` they map them to [-1, 1] before the stem, as ImageNet MobileNetV2 expects),
and return
``(landmarks, pose)``: (B, 2n) landmark coordinates and (B, 3) yaw/pitch/roll, in the conventions of
:mod:`asmnet_jax.landmarks`. Outputs are float32 whatever the compute dtype.

The structure follows ``keras.applications.MobileNetV2`` (alpha 1.0) layer for layer, so the authors'
Keras weights load one-to-one (:mod:`asmnet_jax.keras_import`):

* stem: 3x3/2 conv to 32 channels, BN, ReLU6;
* blocks 0-16: [1x1 expand, BN, ReLU6] (not in block 0), 3x3 depthwise (stride s), BN, ReLU6,
  1x1 project, BN, plus the input when s == 1 and the channel count is unchanged;
* BN: epsilon 1e-3, momentum 0.999 (Keras and Flax share the convention; ``bn_momentum`` changes
  it for short runs, where 0.999 leaves the running statistics near their initial values); convs
  have no bias; every
  kernel is glorot-uniform initialised, as in Keras.

``ASMNet`` keeps the stem and blocks 0-15, global-average-pools six taps (blocks 1, 3, 6, 10, 13,
15: 24 + 32 + 64 + 96 + 160 + 160 = 536 features), applies Dropout(0.3) and two linear heads.
``MobileNetV2Baseline`` (the paper's "mnv2") is the whole network to the 1280-channel 1x1 conv,
pooled, with the same two heads and no dropout.
"""

from __future__ import annotations

from functools import partial
from typing import Any, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from asmnet_jax.depthwise import conv3x3, depthwise_conv3x3, resolve_impl
from asmnet_jax.landmarks import check_num_landmarks

Dtype = Any

#: (expansion t, output channels, stride) of MobileNetV2 blocks 0..16 (alpha 1.0).
BLOCKS = (
    (1, 16, 1),
    (6, 24, 2), (6, 24, 1),
    (6, 32, 2), (6, 32, 1), (6, 32, 1),
    (6, 64, 2), (6, 64, 1), (6, 64, 1), (6, 64, 1),
    (6, 96, 1), (6, 96, 1), (6, 96, 1),
    (6, 160, 2), (6, 160, 1), (6, 160, 1),
    (6, 320, 1),
)
STEM_CHANNELS = 32
TOP_CHANNELS = 1280
#: Blocks whose outputs ASMNet pools (Keras: block_1/3/6/10/13_project_BN, block_15_add).
ASMNET_TAPS = (1, 3, 6, 10, 13, 15)
ASMNET_DROPOUT = 0.3
BN_MOMENTUM = 0.999
BN_EPSILON = 1e-3
NUM_POSE = 3

glorot_uniform = nn.initializers.glorot_uniform()


def relu6(x):
    return jnp.clip(x, 0, 6)


class DepthwiseConv3x3(nn.Module):
    """3x3 depthwise convolution without bias; kernel (3, 3, 1, C) as in ``nn.Conv`` grouped form."""

    strides: int = 1
    impl: str = "auto"
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        channels = x.shape[-1]
        kernel = self.param("kernel", glorot_uniform, (3, 3, 1, channels), self.param_dtype)
        x = x.astype(self.dtype)
        return depthwise_conv3x3(x, kernel.astype(self.dtype), self.strides, self.impl)


class PointwiseConv(nn.Module):
    """1x1 convolution without bias as one matrix product over (B * H * W, C_in).

    Same parameter as ``nn.Conv(features, (1, 1), use_bias=False)`` (``kernel`` of shape
    (1, 1, C_in, features), same initialiser and RNG path) and the same values. On the CPU, XLA
    lowers the filter gradient of a 1x1 ``conv_general_dilated`` to a convolution over transposed
    copies of the activations (5-15x slower than the forward); the gradient of a ``dot`` is two
    plain matrix products.
    """

    features: int
    kernel_init: Any = glorot_uniform
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        in_features = x.shape[-1]
        kernel = self.param("kernel", self.kernel_init, (1, 1, in_features, self.features),
                            self.param_dtype)
        x, kernel = x.astype(self.dtype), kernel.astype(self.dtype)
        y = lax.dot_general(x.reshape(-1, in_features), kernel.reshape(in_features, self.features),
                            (((1,), (0,)), ((), ())))
        return y.reshape(*x.shape[:-1], self.features)


class StemConv(nn.Module):
    """The stem's 3x3 convolution without bias; the parameter of ``nn.Conv`` (``kernel``, HWIO).

    ``impl`` is the model's ``depthwise_impl``: ``"auto"`` computes it as a matrix product over
    patches (:func:`asmnet_jax.depthwise.conv3x3_as_dot`) when compiled for the CPU and as XLA's
    convolution elsewhere; ``"shift"`` always as the product, ``"xla"`` and ``"mixed"`` always
    as the convolution. Same values.
    """

    features: int
    strides: int = 2
    impl: str = "auto"
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        kernel = self.param("kernel", glorot_uniform, (3, 3, x.shape[-1], self.features),
                            self.param_dtype)
        return conv3x3(x.astype(self.dtype), kernel.astype(self.dtype), self.strides, self.impl)


class BatchNorm(nn.Module):
    """Batch normalisation over (B, H, W) of NHWC inputs, the statistics of ``nn.BatchNorm``.

    Variables, their names, initial values and updates are those of ``nn.BatchNorm``
    (``params``: scale, bias; ``batch_stats``: mean, var; statistics in float32 or wider, biased
    variance E[x^2] - E[x]^2 clipped at 0, averaged over ``axis_name`` in training, running
    averages with ``momentum``). The normalisation is applied as one multiply-add,
    ``x * a + b`` with ``a = scale / sqrt(var + eps)`` and ``b = bias - mean * a``, instead of
    ``(x - mean) * a + bias``: the centred copy of ``x`` that autodiff of the latter keeps for the
    backward pass (an activation-sized array written in the forward and read in the backward of
    every BN) is never formed. Values agree with ``nn.BatchNorm`` to float rounding.
    """

    use_running_average: bool = False
    momentum: float = BN_MOMENTUM
    epsilon: float = BN_EPSILON
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32
    axis_name: Optional[str] = None

    @nn.compact
    def __call__(self, x):
        features = x.shape[-1]
        axes = tuple(range(x.ndim - 1))
        # Statistics in float32, or float64 for a float64 model; updates keep the stored dtype,
        # so a train step returns the state with the dtypes it was given (no second compile).
        stats_dtype = jnp.promote_types(self.dtype or x.dtype, jnp.float32)
        ra_mean = self.variable("batch_stats", "mean", lambda s: jnp.zeros(s, stats_dtype),
                                (features,))
        ra_var = self.variable("batch_stats", "var", lambda s: jnp.ones(s, stats_dtype),
                               (features,))
        if self.use_running_average:
            mean, var = ra_mean.value, ra_var.value
        else:
            xs = x.astype(stats_dtype)
            mean, mean2 = xs.mean(axes), lax.square(xs).mean(axes)
            if self.axis_name is not None and not self.is_initializing():
                mean, mean2 = lax.pmean(jnp.stack([mean, mean2]), self.axis_name)
            var = jnp.maximum(0.0, mean2 - lax.square(mean))
            if not self.is_initializing():
                stored = ra_mean.value.dtype
                ra_mean.value = (self.momentum * ra_mean.value
                                 + (1 - self.momentum) * mean).astype(stored)
                ra_var.value = (self.momentum * ra_var.value
                                + (1 - self.momentum) * var).astype(stored)
        scale = self.param("scale", nn.initializers.ones, (features,), self.param_dtype)
        bias = self.param("bias", nn.initializers.zeros, (features,), self.param_dtype)
        a = scale * lax.rsqrt(var + self.epsilon)
        b = bias - mean * a
        return jnp.asarray(x * a + b, self.dtype)


class _Layers(nn.Module):
    """Shared settings of every conv and BN (dtype, BN axis for cross-device statistics)."""

    dtype: Dtype = jnp.float32
    depthwise_impl: str = "auto"
    bn_axis_name: Optional[str] = None
    bn_momentum: float = BN_MOMENTUM

    def pointwise(self, features, name=None):
        return PointwiseConv(features, kernel_init=glorot_uniform, dtype=self.dtype, name=name)

    def norm(self, train, name=None):
        return BatchNorm(use_running_average=not train, momentum=self.bn_momentum,
                         epsilon=BN_EPSILON, dtype=self.dtype,
                         axis_name=self.bn_axis_name if train else None, name=name)


class InvertedResidual(_Layers):
    """MobileNetV2 block: (B, H, W, Cin) -> (B, H / strides, W / strides, features)."""

    expansion: int = 6
    features: int = 16
    strides: int = 1

    @nn.compact
    def __call__(self, x, train: bool):
        in_channels = x.shape[-1]
        y = x
        if self.expansion != 1:
            y = self.pointwise(in_channels * self.expansion, name="expand")(y)
            y = relu6(self.norm(train, name="expand_bn")(y))
        y = DepthwiseConv3x3(self.strides, self.depthwise_impl, self.dtype, name="depthwise")(y)
        y = relu6(self.norm(train, name="depthwise_bn")(y))
        y = self.pointwise(self.features, name="project")(y)
        y = self.norm(train, name="project_bn")(y)
        if self.strides == 1 and in_channels == self.features:
            y = x + y
        return y


class MobileNetV2Backbone(_Layers):
    """Stem and the first ``num_blocks`` blocks, optionally the 1x1 conv to 1280 channels.

    Returns the final feature map and a dict {block index: output} for the blocks in ``taps``.
    """

    num_blocks: int = len(BLOCKS)
    top_conv: bool = True
    taps: Sequence[int] = ()

    @nn.compact
    def __call__(self, x, train: bool):
        if x.ndim != 4 or x.shape[-1] != 3:
            raise ValueError(f"images must be (B, H, W, 3), got shape {x.shape}")
        if x.shape[1] % 32 or x.shape[2] % 32:
            raise ValueError(f"image height and width must be divisible by 32, got {x.shape[1:3]}")
        x = x.astype(self.dtype)
        x = StemConv(STEM_CHANNELS, strides=2, impl=self.depthwise_impl, dtype=self.dtype,
                     name="stem")(x)
        x = relu6(self.norm(train, name="stem_bn")(x))
        tapped = {}
        layers = dict(dtype=self.dtype, depthwise_impl=self.depthwise_impl,
                      bn_axis_name=self.bn_axis_name, bn_momentum=self.bn_momentum)
        for index, (expansion, features, strides) in enumerate(BLOCKS[:self.num_blocks]):
            x = InvertedResidual(expansion=expansion, features=features, strides=strides,
                                 name=f"block_{index}", **layers)(x, train)
            if index in self.taps:
                tapped[index] = x
        if self.top_conv:
            x = self.pointwise(TOP_CHANNELS, name="top")(x)
            x = relu6(self.norm(train, name="top_bn")(x))
        return x, tapped


def _global_average_pool(x):
    return jnp.mean(x.astype(jnp.float32), axis=(1, 2))


#: How a model scales its [0, 1] input images before the stem (``input_range``): ``"unit"`` keeps
#: them (the authors' models), ``"signed"`` maps them to [-1, 1] (ImageNet MobileNetV2 weights).
INPUT_RANGES = ("unit", "signed")


def scale_input(images, input_range: str):
    """[0, 1] images -> the range the stem expects (see :data:`INPUT_RANGES`)."""
    if input_range == "unit":
        return images
    if input_range == "signed":
        return images * 2.0 - 1.0
    raise ValueError(f"input_range must be one of {INPUT_RANGES}, got {input_range!r}")


class _LandmarkPoseModel(_Layers):
    num_landmarks: int = 68
    input_range: str = "unit"

    def heads(self, features):
        """(B, F) float32 features -> (landmarks (B, 2n), pose (B, 3)), float32."""
        check_num_landmarks(self.num_landmarks)
        dense = partial(nn.Dense, kernel_init=glorot_uniform, dtype=jnp.float32)
        landmarks = dense(2 * self.num_landmarks, name="landmark_head")(features)
        pose = dense(NUM_POSE, name="pose_head")(features)
        return landmarks, pose


class ASMNet(_LandmarkPoseModel):
    """ASMNet: MobileNetV2 blocks 0-15 with six pooled taps and two linear heads."""

    dropout_rate: float = ASMNET_DROPOUT

    @nn.compact
    def __call__(self, images, train: bool = False):
        _, tapped = MobileNetV2Backbone(
            num_blocks=ASMNET_TAPS[-1] + 1, top_conv=False, taps=ASMNET_TAPS, dtype=self.dtype,
            depthwise_impl=self.depthwise_impl, bn_axis_name=self.bn_axis_name,
            bn_momentum=self.bn_momentum, name="backbone")(
                scale_input(images, self.input_range), train)
        features = jnp.concatenate([_global_average_pool(tapped[i]) for i in ASMNET_TAPS], axis=-1)
        features = nn.Dropout(self.dropout_rate, deterministic=not train)(features)
        return self.heads(features)


class MobileNetV2Baseline(_LandmarkPoseModel):
    """The paper's mnv2: full MobileNetV2 to its 1280-d pool, then the two linear heads."""

    @nn.compact
    def __call__(self, images, train: bool = False):
        x, _ = MobileNetV2Backbone(
            dtype=self.dtype, depthwise_impl=self.depthwise_impl, bn_axis_name=self.bn_axis_name,
            bn_momentum=self.bn_momentum, name="backbone")(
                scale_input(images, self.input_range), train)
        return self.heads(_global_average_pool(x))


#: Model names accepted by :func:`create_model` (and configs).
MODELS = {"asmnet": ASMNet, "mnv2": MobileNetV2Baseline}
#: Names of the head parameters that carry the authors' L2 penalty.
HEADS = ("landmark_head", "pose_head")


def create_model(name: str, num_landmarks: int = 68, **kwargs) -> nn.Module:
    """Builds ``"asmnet"`` or ``"mnv2"`` with the given landmark count and module settings."""
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; choose one of {sorted(MODELS)}")
    return MODELS[name](num_landmarks=check_num_landmarks(num_landmarks), **kwargs)


#: Compute dtypes by name (parameters stay float32). float64 needs JAX_ENABLE_X64 (exactness tests).
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float64": jnp.float64}


def build_model(config, bn_axis_name: Optional[str] = None, **overrides) -> nn.Module:
    """The module a training config describes: ``config`` is a ``ConfigDict`` or the dict of a
    run's ``config.json`` (keys an older run did not record take the modules' defaults).
    ``overrides`` replace module settings (``dtype``, ``depthwise_impl``, ...); ``dtype`` may be a
    name of :data:`DTYPES` or a dtype."""
    kwargs = {key: config[key] for key in ("bn_momentum", "input_range", "dtype",
                                           "depthwise_impl") if key in config}
    if config["model"] == "asmnet" and "dropout_rate" in config:
        kwargs["dropout_rate"] = config["dropout_rate"]
    kwargs.update(overrides)
    dtype = kwargs.get("dtype", "float32")
    kwargs["dtype"] = DTYPES[dtype] if isinstance(dtype, str) else dtype
    kwargs["depthwise_impl"] = resolve_impl(kwargs.get("depthwise_impl", "auto"), kwargs["dtype"])
    return create_model(config["model"], int(config["num_landmarks"]),
                        bn_axis_name=bn_axis_name, **kwargs)


def count_parameters(variables) -> dict:
    """Counts of trainable parameters, BN statistics and their total (Keras ``count_params``)."""
    def size(tree):
        return int(sum(leaf.size for leaf in jax.tree_util.tree_leaves(tree)))

    trainable = size(variables.get("params", {}))
    statistics = size(variables.get("batch_stats", {}))
    return {"trainable": trainable, "batch_stats": statistics, "total": trainable + statistics}
