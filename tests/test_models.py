import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from asmnet_jax.models import (ASMNet, BN_MOMENTUM, MobileNetV2Baseline, count_parameters,
                               create_model)

SIZE = 64


def _shapes(model, size=SIZE):
    images = jax.ShapeDtypeStruct((1, size, size, 3), jnp.float32)
    return jax.eval_shape(lambda x: model.init(jax.random.key(0), x), images)


@pytest.mark.parametrize("name,points,total,trainable", [
    ("asmnet", 68, 1_439_507, 1_412_435),
    ("asmnet", 98, 1_471_727, None),
    ("mnv2", 68, 2_436_043, None),
    ("mnv2", 98, 2_512_903, None),
])
def test_parameter_counts_match_the_keras_models(name, points, total, trainable):
    counts = count_parameters(_shapes(create_model(name, points)))
    assert counts["total"] == total
    if trainable is not None:
        assert counts["trainable"] == trainable


def test_head_inputs_are_the_pooled_taps():
    asmnet = _shapes(create_model("asmnet", 68))["params"]
    assert asmnet["landmark_head"]["kernel"].shape == (536, 136)
    assert asmnet["pose_head"]["kernel"].shape == (536, 3)
    assert "block_15" in asmnet["backbone"] and "block_16" not in asmnet["backbone"]
    assert "top" not in asmnet["backbone"]
    assert "expand" not in asmnet["backbone"]["block_0"]
    mnv2 = _shapes(create_model("mnv2", 98))["params"]
    assert mnv2["landmark_head"]["kernel"].shape == (1280, 196)
    assert "block_16" in mnv2["backbone"] and "top" in mnv2["backbone"]


@pytest.fixture(scope="module")
def asmnet_and_variables():
    model = ASMNet(num_landmarks=68)
    variables = jax.jit(model.init)(jax.random.key(0), jnp.zeros((1, SIZE, SIZE, 3)))
    return model, variables


def test_forward_shapes_and_determinism(asmnet_and_variables):
    model, variables = asmnet_and_variables
    images = jax.random.uniform(jax.random.key(1), (2, SIZE, SIZE, 3))
    apply = jax.jit(model.apply, static_argnames="train")
    landmarks, pose = apply(variables, images, train=False)
    assert landmarks.shape == (2, 136) and pose.shape == (2, 3)
    assert landmarks.dtype == pose.dtype == jnp.float32
    again, _ = apply(variables, images, train=False)
    np.testing.assert_array_equal(landmarks, again)


def test_train_mode_uses_dropout_and_updates_batch_stats(asmnet_and_variables):
    model, variables = asmnet_and_variables
    images = jax.random.uniform(jax.random.key(1), (2, SIZE, SIZE, 3))

    @jax.jit
    def run(key):
        return model.apply(variables, images, train=True, rngs={"dropout": key},
                           mutable=["batch_stats"])

    (lm_a, _), updates = run(jax.random.key(0))
    (lm_b, _), _ = run(jax.random.key(1))
    assert not np.allclose(lm_a, lm_b)  # dropout masks differ

    # Keras/Flax momentum convention: running = 0.999 * running + 0.001 * batch statistic.
    kernel = variables["params"]["backbone"]["stem"]["kernel"]
    stem = jax.lax.conv_general_dilated(images, kernel, (2, 2), "SAME",
                                        dimension_numbers=("NHWC", "HWIO", "NHWC"))
    batch_mean = np.asarray(stem).mean(axis=(0, 1, 2))
    new_mean = updates["batch_stats"]["backbone"]["stem_bn"]["mean"]
    np.testing.assert_allclose(new_mean, (1 - BN_MOMENTUM) * batch_mean, rtol=1e-4, atol=1e-7)


def test_bn_momentum_is_configurable(asmnet_and_variables):
    _, variables = asmnet_and_variables
    images = jax.random.uniform(jax.random.key(3), (2, SIZE, SIZE, 3))
    model = ASMNet(num_landmarks=68, bn_momentum=0.9)
    _, updates = jax.jit(lambda v, x: model.apply(v, x, train=True, mutable=["batch_stats"],
                                                  rngs={"dropout": jax.random.key(0)}))(
        variables, images)
    kernel = variables["params"]["backbone"]["stem"]["kernel"]
    stem = jax.lax.conv_general_dilated(images, kernel, (2, 2), "SAME",
                                        dimension_numbers=("NHWC", "HWIO", "NHWC"))
    np.testing.assert_allclose(updates["batch_stats"]["backbone"]["stem_bn"]["mean"],
                               0.1 * np.asarray(stem).mean(axis=(0, 1, 2)), rtol=1e-4, atol=1e-7)


def test_depthwise_forms_give_the_same_model_outputs(asmnet_and_variables):
    _, variables = asmnet_and_variables
    images = jax.random.uniform(jax.random.key(2), (2, SIZE, SIZE, 3))
    outs = [jax.jit(ASMNet(num_landmarks=68, depthwise_impl=impl).apply)(variables, images)
            for impl in ("shift", "xla")]
    for a, b in zip(*outs):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


def test_glorot_uniform_initialisation(asmnet_and_variables):
    _, variables = asmnet_and_variables
    depthwise = np.asarray(variables["params"]["backbone"]["block_1"]["depthwise"]["kernel"])
    limit = np.sqrt(6.0 / (9 * 1 + 9 * 96))  # Keras fans of a (3, 3, 96, 1) depthwise kernel
    assert np.abs(depthwise).max() <= limit
    assert np.abs(depthwise).max() > 0.9 * limit
    head = np.asarray(variables["params"]["landmark_head"]["kernel"])
    assert np.abs(head).max() <= np.sqrt(6.0 / (536 + 136))
    np.testing.assert_array_equal(variables["params"]["landmark_head"]["bias"], 0)


def test_bfloat16_compute_keeps_float32_params_and_outputs():
    model = MobileNetV2Baseline(num_landmarks=98, dtype=jnp.bfloat16)
    variables = _shapes(model)
    assert all(leaf.dtype == jnp.float32 for leaf in jax.tree_util.tree_leaves(variables))
    images = jax.ShapeDtypeStruct((1, SIZE, SIZE, 3), jnp.float32)
    landmarks, pose = jax.eval_shape(model.apply, variables, images)
    assert landmarks.shape == (1, 196) and landmarks.dtype == jnp.float32
    assert pose.dtype == jnp.float32


def test_bad_inputs_are_rejected():
    with pytest.raises(ValueError, match="divisible by 32"):
        _shapes(create_model("asmnet"), size=70)
    with pytest.raises(ValueError, match="unknown model"):
        create_model("resnet")
    with pytest.raises(ValueError, match="num_landmarks"):
        create_model("asmnet", 21)


def _relative_error(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.max(np.abs(a - b)) / np.max(np.abs(b)))


def _assert_equals_flax_conv(module, reference, x, seed):
    """Same parameter tree and initial values as ``reference`` (an ``nn.Conv``), so checkpoints
    and the Keras importer are unaffected; same outputs and gradients (parameters and input)."""
    params_ref = reference.init(jax.random.key(0), x)
    params = module.init(jax.random.key(0), x)
    assert jax.tree_util.tree_structure(params) == jax.tree_util.tree_structure(params_ref)
    np.testing.assert_array_equal(params["params"]["kernel"], params_ref["params"]["kernel"])

    y_ref, y = reference.apply(params_ref, x), jax.jit(module.apply)(params, x)
    assert y.shape == y_ref.shape
    assert _relative_error(y, y_ref) <= 1e-5
    cotangent = jax.random.normal(jax.random.key(seed), y_ref.shape)

    def grads(m):
        return jax.jit(jax.grad(lambda p, x: jnp.sum(m.apply(p, x) * cotangent),
                                argnums=(0, 1)))(params, x)

    for g, g_ref in zip(jax.tree_util.tree_leaves(grads(module)),
                        jax.tree_util.tree_leaves(grads(reference))):
        assert g.shape == g_ref.shape
        assert _relative_error(g, g_ref) <= 1e-5
    return y


@pytest.mark.parametrize("shape,features", [((2, 8, 8, 16), 24), ((3, 5, 7, 9), 4)])
def test_pointwise_conv_equals_flax_conv_params_values_and_gradients(shape, features):
    from asmnet_jax.models import PointwiseConv, glorot_uniform
    reference = nn.Conv(features, (1, 1), padding="SAME", use_bias=False,
                        kernel_init=glorot_uniform)
    x = jax.random.normal(jax.random.key(4), shape)
    y = _assert_equals_flax_conv(PointwiseConv(features), reference, x, seed=14)
    assert y.shape == shape[:-1] + (features,)


@pytest.mark.parametrize("shape,strides", [((2, 16, 16, 3), 2), ((1, 9, 12, 3), 2),
                                            ((2, 7, 6, 5), 1)])
@pytest.mark.parametrize("impl", ["auto", "shift"])
def test_stem_conv_equals_flax_conv_params_values_and_gradients(shape, strides, impl):
    from asmnet_jax.models import StemConv, glorot_uniform
    reference = nn.Conv(32, (3, 3), strides=(strides, strides), padding="SAME", use_bias=False,
                        kernel_init=glorot_uniform)
    x = jax.random.normal(jax.random.key(5), shape)
    _assert_equals_flax_conv(StemConv(32, strides=strides, impl=impl), reference, x, seed=15)


def test_stem_conv_on_the_cpu_is_a_matrix_product():
    from asmnet_jax.models import StemConv
    stem = StemConv(32)
    x = jnp.ones((2, 32, 32, 3))
    params = stem.init(jax.random.key(0), x)
    train = jax.jit(jax.grad(lambda p: jnp.sum(stem.apply(p, x) ** 2)))
    hlo = train.lower(params).compile().as_text()
    assert "convolution(" not in hlo
    assert "convolution(" in jax.jit(StemConv(32, impl="xla").apply).lower(params, x).as_text(
        dialect="hlo")


@pytest.mark.parametrize("train", [True, False])
def test_batch_norm_equals_flax_batch_norm(train):
    from asmnet_jax.models import BatchNorm
    kx, ks, kg = jax.random.split(jax.random.key(5), 3)
    x = 3.0 + 2.0 * jax.random.normal(kx, (4, 5, 6, 7))  # a mean far from 0, as after a conv
    reference = nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-3)
    norm = BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-3)
    variables = reference.init(jax.random.key(0), x)
    own = norm.init(jax.random.key(0), x)
    assert jax.tree_util.tree_structure(own) == jax.tree_util.tree_structure(variables)
    for a, b in zip(jax.tree_util.tree_leaves(own), jax.tree_util.tree_leaves(variables)):
        np.testing.assert_array_equal(a, b)
    # Non-trivial parameters and running statistics.
    k1, k2, k3, k4 = jax.random.split(ks, 4)
    variables = {"params": {"scale": 1 + 0.2 * jax.random.normal(k1, (7,)),
                            "bias": 0.3 * jax.random.normal(k2, (7,))},
                 "batch_stats": {"mean": 3 + jax.random.normal(k3, (7,)),
                                 "var": jax.random.uniform(k4, (7,), minval=2, maxval=6)}}
    cotangent = jax.random.normal(kg, x.shape)

    def run(module):
        def loss(params, x):
            y, updates = module.apply({"params": params, "batch_stats": variables["batch_stats"]},
                                      x, mutable=["batch_stats"])
            return jnp.sum(y * cotangent), (y, updates)
        (_, (y, updates)), grads = jax.value_and_grad(loss, argnums=(0, 1), has_aux=True)(
            variables["params"], x)
        return y, updates, grads

    y, updates, grads = run(norm)
    y_ref, updates_ref, grads_ref = run(reference)
    assert _relative_error(y, y_ref) <= 1e-5
    for a, b in zip(jax.tree_util.tree_leaves((updates, grads)),
                    jax.tree_util.tree_leaves((updates_ref, grads_ref))):
        assert a.shape == b.shape and a.dtype == b.dtype
        assert _relative_error(a, b) <= 1e-5
