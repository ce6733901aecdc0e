import jax
import jax.numpy as jnp
import numpy as np
import pytest

from asmnet_jax.depthwise import (depthwise_conv3x3, depthwise_conv3x3_mixed,
                                  depthwise_conv3x3_shift, depthwise_conv3x3_shift_autodiff,
                                  depthwise_conv3x3_xla)


def _relative_error(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.max(np.abs(a - b)) / np.max(np.abs(b)))


@pytest.mark.parametrize("form", [depthwise_conv3x3_shift, depthwise_conv3x3_mixed],
                         ids=["shift", "mixed"])
@pytest.mark.parametrize("strides", [1, 2])
@pytest.mark.parametrize("shape", [(2, 16, 16, 8), (3, 15, 9, 5)])
def test_shift_add_equals_grouped_conv_values_and_gradients(form, strides, shape):
    kx, kw, kg = jax.random.split(jax.random.key(strides), 3)
    x = jax.random.normal(kx, shape)
    w = jax.random.normal(kw, (3, 3, 1, shape[-1]))
    y_ref = depthwise_conv3x3_xla(x, w, strides)
    y = form(x, w, strides)
    assert y.shape == y_ref.shape
    assert _relative_error(y, y_ref) <= 1e-5

    cotangent = jax.random.normal(kg, y_ref.shape)

    def grads(fn):
        return jax.grad(lambda x, w: jnp.sum(fn(x, w, strides) * cotangent), argnums=(0, 1))(x, w)

    for g, g_ref in zip(grads(form), grads(depthwise_conv3x3_xla)):
        assert g.shape == g_ref.shape
        assert _relative_error(g, g_ref) <= 1e-5


@pytest.mark.parametrize("strides", [1, 2])
@pytest.mark.parametrize("shape", [(2, 6, 9, 4), (1, 7, 5, 3)])
def test_custom_gradient_equals_autodiff_of_the_shift_add(strides, shape):
    """The hand-written VJP against JAX's autodiff of the same nine multiply-adds (odd, even and
    mixed sizes, so every SAME padding case of the transposed convolution is covered)."""
    kx, kw, kg = jax.random.split(jax.random.key(10 + strides), 3)
    x = jax.random.normal(kx, shape)
    w = jax.random.normal(kw, (3, 3, 1, shape[-1]))
    y, vjp = jax.vjp(lambda x, w: depthwise_conv3x3_shift(x, w, strides), x, w)
    y_ref, vjp_ref = jax.vjp(lambda x, w: depthwise_conv3x3_shift_autodiff(x, w, strides), x, w)
    np.testing.assert_array_equal(y, y_ref)
    cotangent = jax.random.normal(kg, y.shape)
    for g, g_ref in zip(vjp(cotangent), vjp_ref(cotangent)):
        assert g.shape == g_ref.shape and g.dtype == g_ref.dtype
        assert _relative_error(g, g_ref) <= 1e-5


def test_custom_gradient_keeps_bfloat16_dtypes():
    x = jax.random.normal(jax.random.key(0), (1, 8, 8, 4), jnp.bfloat16)
    w = jax.random.normal(jax.random.key(1), (3, 3, 1, 4), jnp.bfloat16)
    dx, dw = jax.grad(lambda x, w: jnp.sum(depthwise_conv3x3_shift(x, w, 2).astype(jnp.float32)),
                      argnums=(0, 1))(x, w)
    assert dx.dtype == dw.dtype == jnp.bfloat16
    dx_ref, dw_ref = jax.grad(
        lambda x, w: jnp.sum(depthwise_conv3x3_xla(x.astype(jnp.float32), w.astype(jnp.float32), 2)),
        argnums=(0, 1))(x, w)
    np.testing.assert_allclose(np.asarray(dx, np.float32), dx_ref, rtol=2e-2, atol=2e-2)
    np.testing.assert_allclose(np.asarray(dw, np.float32), dw_ref, rtol=2e-2, atol=2e-2)


def test_shift_add_matches_a_direct_loop():
    """Independent of XLA's convolution: a NumPy loop over output pixels (stride 2, SAME)."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(1, 6, 6, 3)).astype(np.float32)
    w = rng.normal(size=(3, 3, 1, 3)).astype(np.float32)
    xp = np.pad(x, ((0, 0), (0, 1), (0, 1), (0, 0)))  # SAME for even sizes, stride 2
    expected = np.zeros((1, 3, 3, 3), np.float32)
    for i in range(3):
        for j in range(3):
            window = xp[:, 2 * i:2 * i + 3, 2 * j:2 * j + 3, :]
            expected[:, i, j, :] = np.sum(window * w[:, :, 0, :], axis=(1, 2))
    np.testing.assert_allclose(depthwise_conv3x3_shift(x, w, 2), expected, rtol=1e-5, atol=1e-5)


def test_auto_picks_the_shift_add_form_on_cpu():
    x = jnp.ones((1, 8, 8, 4))
    w = jnp.ones((3, 3, 1, 4))

    def hlo(impl):
        fn = jax.jit(lambda x, w: depthwise_conv3x3(x, w, 1, impl))
        return fn.lower(x, w).compile().as_text()

    assert jax.default_backend() == "cpu"
    assert "convolution" in hlo("xla")
    assert "convolution" not in hlo("auto")
    np.testing.assert_allclose(depthwise_conv3x3(x, w, 1, "auto"),
                               depthwise_conv3x3_xla(x, w, 1), rtol=1e-6)


@pytest.mark.parametrize("dtype, platform, convolutions", [
    ("float32", "cuda", 1),    # "mixed": only the filter gradient is a convolution
    ("bfloat16", "cuda", 2),   # cuDNN: input and filter gradients
    ("float32", "tpu", 2),
    ("float32", "cpu", 0),     # the shift-add form
])
def test_auto_form_per_platform_and_dtype(dtype, platform, convolutions):
    """What "auto" lowers to, read from the StableHLO exported for each platform (no device
    needed): the convolutions in the gradient of a stride-2 depthwise convolution."""
    from jax import export

    x = jnp.ones((1, 8, 8, 4), dtype)
    w = jnp.ones((3, 3, 1, 4), dtype)
    grad = jax.jit(jax.grad(
        lambda x, w: jnp.sum(depthwise_conv3x3(x, w, 2).astype(jnp.float32)), argnums=(0, 1)))
    module = export.export(grad, platforms=(platform,))(x, w).mlir_module()
    assert module.count("stablehlo.convolution") == convolutions


def test_bad_arguments_are_rejected():
    x = jnp.ones((1, 8, 8, 4))
    with pytest.raises(ValueError, match="stride"):
        depthwise_conv3x3(x, jnp.ones((3, 3, 1, 4)), 3)
    with pytest.raises(ValueError, match="kernel"):
        depthwise_conv3x3(x, jnp.ones((3, 3, 4, 1)), 1)
    with pytest.raises(ValueError, match="impl"):
        depthwise_conv3x3(x, jnp.ones((3, 3, 1, 4)), 1, "fast")


def test_bad_arguments_to_the_full_3x3_convolution_are_rejected():
    from asmnet_jax.depthwise import conv3x3
    x = jnp.ones((1, 8, 8, 3))
    with pytest.raises(ValueError, match=r"3x3 convolution impl must be one of .*'fast'"):
        conv3x3(x, jnp.ones((3, 3, 3, 8)), 2, "fast")
    with pytest.raises(ValueError, match=r"kernel must be \(3, 3, 3, F\)"):
        conv3x3(x, jnp.ones((3, 3, 4, 8)), 2)
