import jax
import jax.numpy as jnp
import numpy as np
import pytest

from asmnet_jax.asm import ShapeModel
from asmnet_jax.losses import asm_alpha, asm_loss, head_l2, landmark_mse, pose_mse, total_loss


def test_landmark_and_pose_mse_by_hand():
    g = jnp.array([[1.0, 2.0], [3.0, 4.0]])
    p = jnp.array([[0.0, 2.0], [3.0, 2.0]])
    assert float(landmark_mse(p, g)) == pytest.approx((1 + 0 + 0 + 4) / 4)
    pose_gt = jnp.array([[0.1, 0.2, 0.3]])
    pose_pred = jnp.array([[0.1, 0.0, 0.6]])
    assert float(pose_mse(pose_pred, pose_gt)) == pytest.approx((0 + 0.04 + 0.09) / 3)


@pytest.mark.parametrize("total,expected", [
    (30, [2.0] * 10 + [1.0] * 10 + [0.5] * 10),
    (10, [2.0] * 4 + [1.0] * 3 + [0.5] * 3),   # 3e < 10 for e <= 3, 3e < 20 for e <= 6
    (3, [2.0, 1.0, 0.5]),
])
def test_alpha_schedule_boundaries(total, expected):
    assert [float(asm_alpha(e, total)) for e in range(total)] == expected


def test_alpha_from_a_traced_epoch_never_recompiles():
    traces = []

    @jax.jit
    def alpha(epoch):
        traces.append(1)
        return asm_alpha(epoch, 9)

    values = [float(alpha(jnp.int32(e))) for e in range(9)]
    assert values == [2.0] * 3 + [1.0] * 3 + [0.5] * 3
    assert len(traces) == 1


def _axis_model():
    """ASM over 2 points whose only mode is the first coordinate, eigenvalue 1 (clamp at 3)."""
    return ShapeModel(mean=jnp.zeros(4), components=jnp.array([[1.0], [0.0], [0.0], [0.0]]),
                      eigenvalues=jnp.array([1.0]))


def test_asm_loss_and_total_by_hand():
    model = _axis_model()
    g = jnp.array([[5.0, 1.0, 0.0, 2.0]])      # ASM(g) = [3, 0, 0, 0]
    p = jnp.array([[4.0, 1.0, 1.0, 2.0]])
    assert float(asm_loss(p, g, model)) == pytest.approx((1 + 1 + 1 + 4) / 4)
    mse = (1 + 0 + 1 + 0) / 4
    pose_gt, pose_pred = jnp.zeros((1, 3)), jnp.array([[0.3, 0.0, 0.0]])
    params = {"landmark_head": {"kernel": jnp.array([[1.0, 2.0]]), "bias": jnp.array([1.0, 0.0])},
              "pose_head": {"kernel": jnp.array([[3.0]]), "bias": jnp.array([0.0])},
              "backbone": {"kernel": jnp.array([100.0])}}
    total, terms = total_loss(p, pose_pred, g, pose_gt, shape_model=model, alpha=2.0,
                              params=params, head_l2_weight=0.01)
    assert float(terms["mse"]) == pytest.approx(mse)
    assert float(terms["asm"]) == pytest.approx(7 / 4)
    assert float(terms["facial"]) == pytest.approx(mse + 2.0 * 7 / 4)
    assert float(terms["pose"]) == pytest.approx(0.09 / 3)
    assert float(terms["head_l2"]) == pytest.approx(0.01 * (1 + 4 + 1 + 9))
    expected = mse + 2.0 * 7 / 4 + 0.5 * 0.03 + 0.15
    assert float(total) == pytest.approx(expected) == float(terms["total"])
    assert float(head_l2(params)) == pytest.approx(0.15)


def test_plain_mse_variant_and_gradients():
    g = jnp.array([[5.0, 1.0, 0.0, 2.0]])
    p = jnp.array([[4.0, 1.0, 1.0, 2.0]])
    zeros = jnp.zeros((1, 3))
    total, terms = total_loss(p, zeros, g, zeros)
    assert float(terms["asm"]) == 0.0 and float(terms["alpha"]) == 0.0
    assert float(total) == pytest.approx(0.5)
    # d/dp of mse + alpha * asm: 2 (p - g) / 4 + alpha * 2 (p - ASM(g)) / 4; no gradient through ASM.
    grad = jax.grad(lambda p: total_loss(p, zeros, g, zeros, shape_model=_axis_model(),
                                         alpha=1.0)[0])(p)
    asm_g = np.array([[3.0, 0.0, 0.0, 0.0]])
    np.testing.assert_allclose(grad, (2 * (p - g) + 2 * (p - asm_g)) / 4, rtol=1e-6)


def test_head_l2_needs_params():
    z = jnp.zeros((1, 4))
    with pytest.raises(ValueError, match="params"):
        total_loss(z, jnp.zeros((1, 3)), z, jnp.zeros((1, 3)), head_l2_weight=0.01)


def test_wing_loss_by_hand_is_continuous_and_steeper_than_l1_for_small_errors():
    from asmnet_jax.losses import WING, landmark_wing

    w, eps = WING
    target = jnp.zeros((1, 4))
    errors = jnp.asarray([[0.25 * w, w - 1e-6, w + 1e-6, 3 * w]])
    got = float(landmark_wing(errors, target))
    offset = w - w * np.log1p(w / eps)
    by_hand = np.mean([w * np.log1p(0.25 * w / eps), w * np.log1p((w - 1e-6) / eps),
                       (w + 1e-6) - offset, 3 * w - offset])
    assert got == pytest.approx(by_hand, rel=1e-5)
    # Continuous at w, and its gradient below w is w / (eps + |x|) > 1 (L1's), 1 above.
    below, above = (float(landmark_wing(jnp.full((1, 1), x), jnp.zeros((1, 1))))
                    for x in (w - 1e-5, w + 1e-5))
    # No jump at w: the difference is the two slopes (w / (eps + w) below, 1 above) times 1e-5.
    assert above - below == pytest.approx((w / (eps + w) + 1.0) * 1e-5, rel=2e-2)
    grad = jax.grad(lambda p: landmark_wing(p, jnp.zeros((1, 1))))
    assert float(grad(jnp.full((1, 1), 0.1 * w))[0, 0]) == pytest.approx(w / (eps + 0.1 * w),
                                                                          rel=1e-4)
    assert float(grad(jnp.full((1, 1), 2 * w))[0, 0]) == pytest.approx(1.0)
    # total_loss takes it for both landmark terms, with the given (w, eps).
    _, terms = total_loss(errors, jnp.zeros((1, 3)), target, jnp.zeros((1, 3)),
                          landmark_loss="wing", wing=(w, eps))
    assert float(terms["mse"]) == pytest.approx(got, rel=1e-6)
