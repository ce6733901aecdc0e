import jax
import jax.numpy as jnp
import numpy as np
import pytest

from asmnet_jax.asm import ShapeModel


def _shapes(count=300, points=68, seed=0):
    """Random face-like shapes: a mean, a few strong modes and a little noise, (N, 2n)."""
    rng = np.random.default_rng(seed)
    mean = rng.uniform(-0.4, 0.4, size=2 * points)
    modes = rng.normal(size=(6, 2 * points)) * np.array([0.08, 0.05, 0.03, 0.02, 0.01, 0.005])[:, None]
    coefficients = rng.normal(size=(count, 6))
    return (mean + coefficients @ modes + 0.002 * rng.normal(size=(count, 2 * points))).astype(np.float32)


def _authors_projection(shapes, eigenvalues, eigenvectors, mean):
    """NumPy port of the authors' per-sample loop (eigenvectors as (2n, k) columns)."""
    out = []
    for shape in shapes:
        b_vector = np.dot(eigenvectors.T, shape - mean)
        for i, b_item in enumerate(b_vector):
            limit = 3 * np.sqrt(eigenvalues[i])
            b_vector[i] = min(b_item, limit) if b_item > 0 else max(b_item, -limit)
        out.append(mean + np.dot(eigenvectors, b_vector))
    return np.array(out)


@pytest.fixture(scope="module")
def shapes():
    return _shapes()


@pytest.mark.parametrize("variance", [0.80, 0.85, 0.90, 0.95, 0.97])
def test_fit_agrees_with_scikit_learn_pca(shapes, variance):
    decomposition = pytest.importorskip("sklearn.decomposition")
    pca = decomposition.PCA(n_components=variance, svd_solver="full").fit(shapes.astype(np.float64))
    model = ShapeModel.fit(shapes, variance=variance)
    assert model.num_components == pca.n_components_
    np.testing.assert_allclose(model.eigenvalues, pca.explained_variance_, rtol=1e-5)
    np.testing.assert_allclose(model.mean, pca.mean_, atol=1e-6)
    alignment = np.abs(np.sum(np.asarray(model.components) * pca.components_.T, axis=0))
    np.testing.assert_allclose(alignment, 1.0, atol=1e-5)


def test_component_rule_is_strictly_exceeds():
    # Eigenvalues 3, 1 (ratios 0.75, 0.25) in two orthogonal directions, exactly.
    shapes = np.array([[3, 0], [-3, 0], [0, np.sqrt(3)], [0, -np.sqrt(3)]], np.float64)
    assert ShapeModel.fit(shapes, variance=0.74).num_components == 1
    assert ShapeModel.fit(shapes, variance=0.76).num_components == 2
    np.testing.assert_allclose(ShapeModel.fit(shapes, 0.76).eigenvalues, [6.0, 2.0], rtol=1e-6)


def test_a_shape_in_the_span_within_the_clamp_is_unchanged(shapes):
    model = ShapeModel.fit(shapes, 0.95)
    b = 0.9 * 3 * np.sqrt(np.asarray(model.eigenvalues)) * np.where(np.arange(model.num_components) % 2, 1, -1)
    shape = np.asarray(model.mean) + np.asarray(model.components) @ b
    np.testing.assert_allclose(model.project(shape[None])[0], shape, atol=1e-6)


def test_each_coefficient_is_clamped_to_three_sqrt_lambda(shapes):
    model = ShapeModel.fit(shapes, 0.95)
    sd = np.sqrt(np.asarray(model.eigenvalues))
    b = np.zeros(model.num_components)
    b[0], b[1], b[2] = 5 * sd[0], -4 * sd[1], 0.5 * sd[2]
    shape = np.asarray(model.mean) + np.asarray(model.components) @ b
    projected = np.asarray(model.project(shape))
    recovered = np.asarray(model.components).T @ (projected - np.asarray(model.mean))
    expected = b.copy()
    expected[0], expected[1] = 3 * sd[0], -3 * sd[1]
    np.testing.assert_allclose(recovered, expected, atol=1e-5)


def test_equals_the_authors_per_sample_loop_batched_and_jitted(shapes):
    model = ShapeModel.fit(shapes, 0.90)
    rng = np.random.default_rng(1)
    batch = shapes[:16] + rng.normal(scale=0.2, size=shapes[:16].shape).astype(np.float32)
    expected = _authors_projection(batch.astype(np.float64), np.asarray(model.eigenvalues, np.float64),
                                   np.asarray(model.components, np.float64),
                                   np.asarray(model.mean, np.float64))
    projected = jax.jit(lambda m, s: m.project(s))(model, batch)
    np.testing.assert_allclose(projected, expected, atol=1e-6)
    # Leading batch dimensions of any rank.
    np.testing.assert_allclose(model.project(batch.reshape(4, 4, -1)).reshape(16, -1), projected,
                               atol=1e-6)


def test_no_gradient_flows_through_the_projection(shapes):
    model = ShapeModel.fit(shapes, 0.90)
    grad = jax.grad(lambda s: jnp.sum(model.project(s) ** 2))(jnp.asarray(shapes[:2]))
    np.testing.assert_array_equal(grad, 0.0)


def test_save_and_load_round_trip(shapes, tmp_path):
    model = ShapeModel.fit(shapes, 0.90)
    path = tmp_path / "asm.npz"
    model.save(path)
    loaded = ShapeModel.load(path)
    for name in ("mean", "components", "eigenvalues"):
        np.testing.assert_array_equal(getattr(loaded, name), getattr(model, name))
    bad = tmp_path / "bad.npz"
    bad.write_text("not a shape model")
    with pytest.raises(ValueError, match="bad.npz"):
        ShapeModel.load(bad)


def test_bad_fit_inputs_are_rejected(shapes):
    with pytest.raises(ValueError, match="variance"):
        ShapeModel.fit(shapes, variance=90)
    with pytest.raises(ValueError, match="NaN"):
        ShapeModel.fit(np.full((3, 4), np.nan))
    with pytest.raises(ValueError, match="at least 2"):
        ShapeModel.fit(shapes[:1])


# --------------------------------------------------------------------------------------------------
# Shape plausibility


def test_plausibility_of_the_mean_is_one_and_of_a_scrambled_shape_zero(shapes):
    model = ShapeModel.fit(shapes, 0.95)
    assert model.calibrated
    mean = model.plausibility(np.asarray(model.mean)[None])
    assert float(mean["score"][0]) == pytest.approx(1.0, abs=1e-5)
    assert float(mean["residual"][0]) == pytest.approx(0.0, abs=1e-5)
    assert float(mean["mahalanobis"][0]) == pytest.approx(0.0, abs=1e-5)
    permutation = np.random.default_rng(1).permutation(68)
    scrambled = shapes[:8].reshape(8, 68, 2)[:, permutation].reshape(8, -1)
    assert np.all(np.asarray(model.plausibility(scrambled)["score"]) < 1e-3)
    # Calibrated on the training shapes: their 95th percentile scores 0.5.
    scores = np.asarray(model.plausibility(shapes)["score"])
    assert np.quantile(scores, 0.05) == pytest.approx(0.5, abs=0.02)
    assert np.mean(scores >= 0.5 - 1e-6) == pytest.approx(0.95, abs=0.01)


def test_plausibility_formula_and_jnp_numpy_inputs(shapes):
    model = ShapeModel.fit(shapes, 0.9)
    mean, axes, values = (np.asarray(a, np.float64) for a in
                          (model.mean, model.components, model.eigenvalues))
    batch = shapes[:5].astype(np.float64)
    b = (batch - mean) @ axes
    off = batch - mean - b @ axes.T
    from asmnet_jax.asm import shape_normaliser
    points = mean.reshape(-1, 2)
    assert shape_normaliser(mean) == pytest.approx(np.linalg.norm(points[36] - points[45]))
    residual = np.sqrt(np.sum(off ** 2, 1) / 68) / shape_normaliser(mean)
    mahalanobis = np.sqrt(np.sum(b ** 2 / values, 1))
    score = np.exp(-np.log(2) * ((mahalanobis / float(model.mahalanobis_scale)) ** 2
                                 + (residual / float(model.residual_scale)) ** 2))
    for given in (batch, jnp.asarray(batch, jnp.float32)):
        got = model.plausibility(given)
        np.testing.assert_allclose(got["residual"], residual, rtol=1e-3)
        np.testing.assert_allclose(got["mahalanobis"], mahalanobis, rtol=1e-3)
        np.testing.assert_allclose(got["score"], score, rtol=1e-3, atol=1e-6)


def test_score_falls_monotonically_along_the_first_mode(shapes):
    model = ShapeModel.fit(shapes, 0.95)
    steps = np.linspace(0.0, 6.0, 13)
    along = np.asarray(model.mean)[None] + (steps * np.sqrt(float(model.eigenvalues[0])))[:, None] \
        * np.asarray(model.components)[:, 0][None]
    got = model.plausibility(along)
    np.testing.assert_allclose(got["mahalanobis"], steps, atol=1e-3)
    scores = np.asarray(got["score"])
    assert scores[0] == pytest.approx(1.0, abs=1e-5) and np.all(np.diff(scores) < 0)
    assert scores[-1] < 0.25  # six standard deviations out


def test_saved_calibration_round_trips_and_old_files_load_without_it(shapes, tmp_path):
    model = ShapeModel.fit(shapes, 0.95)
    model.save(tmp_path / "asm.npz")
    again = ShapeModel.load(tmp_path / "asm.npz")
    assert again.calibrated
    assert float(again.residual_scale) == float(model.residual_scale)
    assert float(again.mahalanobis_scale) == float(model.mahalanobis_scale)
    # A file as written before the calibration existed: three arrays only.
    np.savez(tmp_path / "old.npz", mean=np.asarray(model.mean),
             components=np.asarray(model.components), eigenvalues=np.asarray(model.eigenvalues))
    old = ShapeModel.load(tmp_path / "old.npz")
    assert not old.calibrated
    got = old.plausibility(shapes[:3])
    assert set(got) == {"residual", "mahalanobis"}
    np.testing.assert_allclose(old.project(shapes[:3]), model.project(shapes[:3]))
    recalibrated = old.calibrate(shapes)
    assert float(recalibrated.residual_scale) == pytest.approx(float(model.residual_scale),
                                                               rel=1e-4)
    # Half a calibration is refused, naming the file.
    np.savez(tmp_path / "half.npz", mean=np.asarray(model.mean),
             components=np.asarray(model.components), eigenvalues=np.asarray(model.eigenvalues),
             residual_scale=np.float32(0.1))
    with pytest.raises(ValueError, match=r"half\.npz: bad plausibility calibration"):
        ShapeModel.load(tmp_path / "half.npz")


def test_a_calibrated_model_still_goes_through_jit(shapes):
    model = ShapeModel.fit(shapes, 0.9)
    projected = jax.jit(lambda m, s: m.project(s))(model, jnp.asarray(shapes[:4]))
    np.testing.assert_allclose(projected, model.project(shapes[:4]), atol=1e-6)
