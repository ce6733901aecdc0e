import numpy as np
import pytest

from asmnet_jax.metrics import (COLUMNS_300W, COLUMNS_WFLW, Accumulator, auc, ced_curve,
                                failure_rate, full_set_nme, normaliser_distance, per_face_nme,
                                pose_mae, subset_table, summarize, wrap_degrees)


def _face(n, seed):
    """Ground-truth points (n, 2) with distinct, spread-out coordinates."""
    return np.random.default_rng(seed).uniform(10.0, 90.0, size=(n, 2))


# ------------------------------------------------------------------------------------- NME


def test_inter_ocular_nme_by_hand_68():
    gt = np.stack([_face(68, 0), _face(68, 1)])
    gt[0, 36], gt[0, 45] = (10.0, 20.0), (14.0, 23.0)        # distance 5
    gt[1, 36], gt[1, 45] = (0.0, 0.0), (0.0, 2.0)            # distance 2
    pred = gt.copy()
    pred[0] += (3.0, 4.0)                                     # every point 5 off -> 5 / 5
    pred[1, :34] += (0.3, 0.4)                                # half the points 0.5 off -> 0.25 / 2
    nme = per_face_nme(pred, gt)
    assert nme.shape == (2,) and nme.dtype == np.float64
    np.testing.assert_allclose(nme, [1.0, 0.125], rtol=1e-12)
    np.testing.assert_allclose(normaliser_distance(gt), [5.0, 2.0], rtol=1e-12)


def test_inter_ocular_98_uses_points_60_and_72():
    gt = _face(98, 2)[None]
    gt[0, 60], gt[0, 72] = (20.0, 30.0), (26.0, 38.0)        # distance 10
    pred = gt + (0.0, 1.5)
    np.testing.assert_allclose(per_face_nme(pred, gt), [0.15], rtol=1e-12)


def test_interleaved_vectors_and_points_agree_and_units_cancel():
    gt = np.stack([_face(68, 3), _face(68, 4), _face(68, 5)])
    pred = gt + np.random.default_rng(6).normal(0, 2.0, gt.shape)
    ref = per_face_nme(pred, gt)
    np.testing.assert_allclose(per_face_nme(pred.reshape(3, -1), gt.reshape(3, -1)), ref)
    np.testing.assert_allclose(per_face_nme(pred.reshape(3, -1), gt), ref)      # mixed layouts
    # pixels of a 224 crop -> model units (x_px + 0.5) / 224 - 0.5: same NME
    np.testing.assert_allclose(per_face_nme((pred + 0.5) / 224 - 0.5, (gt + 0.5) / 224 - 0.5),
                               ref, rtol=1e-10)


def test_vector_layout_is_interleaved_x_y():
    vec = np.zeros((1, 136))
    vec[0, 2 * 45] = 3.0          # x of point 45
    vec[0, 2 * 45 + 1] = 4.0      # y of point 45 -> inter-ocular distance 5 (point 36 at 0)
    np.testing.assert_allclose(normaliser_distance(vec), [5.0])


def test_inter_pupil_68_uses_the_eye_centres():
    gt = _face(68, 7)[None]
    ring = np.array([(-1, 0), (1, 0), (0, -1), (0, 1), (0.5, 0.5), (-0.5, -0.5)])   # sums to 0
    gt[0, 36:42] = (1.0, 1.0) + ring       # left eye centre (1, 1)
    gt[0, 42:48] = (7.0, 9.0) + 2 * ring   # right eye centre (7, 9): pupil distance 10
    pred = gt + (3.0, 4.0)
    np.testing.assert_allclose(normaliser_distance(gt, "inter_pupil"), [10.0], rtol=1e-12)
    np.testing.assert_allclose(per_face_nme(pred, gt, "inter_pupil"), [0.5], rtol=1e-12)
    # the inter-ocular distance of the same face is point 36 (0, 1) to point 45 (7, 11)
    np.testing.assert_allclose(normaliser_distance(gt), [np.hypot(7.0, 10.0)], rtol=1e-12)


def test_inter_pupil_98_uses_points_96_and_97():
    gt = _face(98, 8)[None]
    gt[0, 96], gt[0, 97] = (2.0, 3.0), (8.0, 11.0)           # distance 10
    pred = gt + (0.6, 0.8)
    np.testing.assert_allclose(per_face_nme(pred, gt, "inter_pupil", num_landmarks=98), [0.1],
                               rtol=1e-12)


def test_box_normaliser_is_sqrt_of_the_gt_box_area():
    gt = np.full((1, 68, 2), 5.0)
    gt[0, :, 0] = np.linspace(1.0, 5.0, 68)                   # width 4
    gt[0, :, 1] = np.linspace(-2.0, 7.0, 68)                  # height 9 -> sqrt(36) = 6
    pred = gt + (3.0, 4.0)
    np.testing.assert_allclose(normaliser_distance(gt, "box"), [6.0], rtol=1e-12)
    np.testing.assert_allclose(per_face_nme(pred, gt, "box"), [5.0 / 6.0], rtol=1e-12)
    # the box is the ground truth's: a prediction twice as large does not change the normaliser
    np.testing.assert_allclose(normaliser_distance(2.0 * gt, "box"), [12.0], rtol=1e-12)
    np.testing.assert_allclose(per_face_nme(2.0 * gt, gt, "box") * 6.0,
                               [np.linalg.norm(gt[0], axis=-1).mean()], rtol=1e-12)


def test_no_faces_give_an_empty_array():
    assert per_face_nme(np.zeros((0, 68, 2)), np.zeros((0, 136))).shape == (0,)


@pytest.mark.parametrize("pred,gt,kwargs,match", [
    (np.zeros((2, 10, 2)), np.zeros((2, 10, 2)), {}, "10 landmarks is not a supported markup"),
    (np.zeros((2, 68, 2)), np.zeros((2, 98, 2)), {}, "does not match|but gt has"),
    (np.zeros((3, 136)), np.zeros((2, 136)), {}, "pred has 3 faces"),
    (np.zeros((2, 135)), np.zeros((2, 135)), {}, "odd last axis"),
    (np.zeros((2, 68, 3)), np.zeros((2, 68, 3)), {}, r"\(N, 2n\) vectors or \(N, n, 2\)"),
    (np.zeros((1, 68, 2)), np.zeros((1, 68, 2)), {"normaliser": "iod"},
     "unknown normaliser 'iod'"),
    (np.zeros((1, 68, 2)), np.zeros((1, 68, 2)), {"num_landmarks": 98}, "num_landmarks=98"),
])
def test_bad_inputs_are_rejected(pred, gt, kwargs, match):
    with pytest.raises(ValueError, match=match):
        per_face_nme(pred, gt, **kwargs)


def test_zero_normaliser_names_the_face():
    gt = np.stack([_face(68, 9), _face(68, 10), _face(68, 11)])
    gt[1, 45] = gt[1, 36]
    msg = "zero inter_ocular normaliser at face 1: points 36 and 45"
    with pytest.raises(ValueError, match=msg):
        per_face_nme(gt, gt)
    gt98 = np.stack([_face(98, 12)] * 2)
    gt98[:, 97] = gt98[:, 96]
    with pytest.raises(ValueError, match=r"zero inter_pupil normaliser at faces 0, 1"):
        per_face_nme(gt98, gt98, "inter_pupil")
    flat = _face(68, 13)[None].copy()
    flat[0, :, 1] = 4.0                                       # zero height
    with pytest.raises(ValueError, match="zero box normaliser at face 0"):
        per_face_nme(flat, flat, "box")


def test_non_finite_coordinates_name_the_face():
    gt = np.stack([_face(68, 14), _face(68, 15)])
    pred = gt.copy()
    pred[1, 3, 0] = np.nan
    with pytest.raises(ValueError, match="pred has non-finite coordinates at face 1"):
        per_face_nme(pred, gt)


# ---------------------------------------------------------------------- FR, AUC, CED


def test_failure_rate_at_the_boundary():
    assert failure_rate([0.1, np.nextafter(0.1, 1.0), 0.05]) == pytest.approx(1 / 3)
    assert failure_rate([0.1, 0.1]) == 0.0
    assert failure_rate([0.2, 0.3], threshold=0.25) == 0.5
    # an NME of exactly 0.1 from per_face_nme: a 3-4-5 shift over an inter-ocular distance of 50
    gt = _face(68, 16)[None]
    gt[0, 36], gt[0, 45] = (0.0, 0.0), (30.0, 40.0)
    nme = per_face_nme(gt + (3.0, 4.0), gt)
    assert nme[0] == 0.1 and failure_rate(nme) == 0.0


def test_auc_exact_small_cases():
    # CED: 1/2 on [0, 0.05), 1 on [0.05, 0.1] -> (0.05 * 0.5 + 0.05 * 1) / 0.1 = 0.75
    assert auc([0.0, 0.05]) == pytest.approx(0.75, abs=1e-15)
    assert auc([0.025]) == pytest.approx(0.75, abs=1e-15)
    assert auc([0.0, 0.0, 0.0]) == 1.0
    assert auc([0.1, 0.2, 5.0]) == 0.0                        # at or above the threshold
    assert auc([0.0, 0.3]) == pytest.approx(0.5)
    assert auc([0.1], threshold=0.2) == pytest.approx(0.5)


def test_auc_matches_an_independent_step_integration():
    e = np.random.default_rng(17).gamma(2.0, 0.03, size=57)
    t, n = 0.1, e.size
    s = np.sort(e)
    knots = np.concatenate([[0.0], s[s < t], [t]])
    # F = k / n on [knots[k], knots[k + 1]) for k = 0 .. (#errors below t); F(0) counts zeros
    area = sum((k / n) * (knots[k + 1] - knots[k]) for k in range(len(knots) - 1))
    assert auc(e, t) == pytest.approx(area / t, rel=1e-12)
    x, f = ced_curve(e, t, points=20001)                      # dense sampling converges to it
    assert np.trapezoid(f, x) / t == pytest.approx(auc(e, t), abs=1e-3)


def test_ced_curve_is_monotone_and_consistent_with_fr():
    e = np.random.default_rng(18).gamma(2.0, 0.04, size=40)
    e[:3] = 0.0
    e[3] = 0.1
    x, f = ced_curve(e, 0.1, points=11)
    assert x.shape == f.shape == (11,)
    assert x[0] == 0.0 and x[-1] == 0.1
    assert np.all(np.diff(f) >= 0) and 0.0 <= f[0] and f[-1] <= 1.0
    assert f[0] == pytest.approx(3 / 40)                      # exact zeros count at x = 0
    assert f[-1] == pytest.approx(1.0 - failure_rate(e, 0.1))
    np.testing.assert_allclose(ced_curve([0.0, 0.05], 0.1, points=3)[1], [0.5, 1.0, 1.0])


@pytest.mark.parametrize("func", [failure_rate, auc, ced_curve])
def test_error_distribution_inputs_are_checked(func):
    with pytest.raises(ValueError, match="no faces"):
        func([])
    with pytest.raises(ValueError, match="finite and >= 0; not at face 1"):
        func([0.1, np.nan])
    with pytest.raises(ValueError, match="1-D"):
        func([[0.1]])
    with pytest.raises(ValueError, match="threshold"):
        func([0.1], threshold=0.0)


# ---------------------------------------------------------------------------- pose


def test_wrap_degrees_to_half_open_interval():
    np.testing.assert_array_equal(wrap_degrees([180, -180, 181, -181, 540, 0, 360, -358]),
                                  [180, 180, -179, 179, 180, 0, 0, 2])


def test_pose_mae_wraps_around():
    pred = np.array([[179.0, 10.0, -5.0], [-179.0, 0.0, 0.0]])
    gt = np.array([[-179.0, 12.0, -5.0], [179.0, -3.0, 180.0]])
    mae = pose_mae(pred, gt)
    assert mae["yaw"] == pytest.approx(2.0)
    assert mae["pitch"] == pytest.approx(2.5)
    assert mae["roll"] == pytest.approx(90.0)
    assert mae["mean"] == pytest.approx((2.0 + 2.5 + 90.0) / 3)
    with pytest.raises(ValueError, match=r"\(N, 3\)"):
        pose_mae(pred[:, :2], gt[:, :2])
    with pytest.raises(ValueError, match="pose_pred is not finite at face 0"):
        pose_mae(np.array([[np.inf, 0, 0]]), np.zeros((1, 3)))


# ------------------------------------------------------------------ summaries, tables


def test_summarize_in_percent_with_pose():
    s = summarize([0.0, 0.05, 0.1, 0.3], pose_pred=np.zeros((4, 3)), pose_gt=np.ones((4, 3)))
    assert s["count"] == 4
    assert s["nme"] == pytest.approx(11.25)
    assert s["fr"] == pytest.approx(25.0)
    assert s["auc"] == pytest.approx((0.1 + 0.05 + 0 + 0) / 4 / 0.1)
    assert s["pose_mae"] == pytest.approx({"yaw": 1.0, "pitch": 1.0, "roll": 1.0, "mean": 1.0})
    assert "pose_mae" not in summarize([0.01])
    with pytest.raises(ValueError, match="both pose_pred and pose_gt"):
        summarize([0.01], pose_pred=np.zeros((1, 3)))


def test_full_set_is_face_weighted():
    full = full_set_nme([0.02, 0.02, 0.02], [0.08])
    np.testing.assert_allclose(full, [0.02, 0.02, 0.02, 0.08])
    assert full.mean() == pytest.approx(0.035)                # not (0.02 + 0.08) / 2


def test_subset_table_300w_layout():
    common, challenging = [0.03, 0.05], [0.09]
    results = {
        "ASMNet": {"common": summarize(common), "challenging": summarize(challenging),
                   "full": summarize(full_set_nme(common, challenging))},
        "mnv2": {"common": summarize([0.04])},
    }
    assert subset_table(results, COLUMNS_300W) == (
        "| model | common | challenging | full |\n"
        "|---|---:|---:|---:|\n"
        "| ASMNet | 4.00 | 9.00 | 5.67 |\n"
        "| mnv2 | 4.00 | - | - |\n")
    fr = subset_table(results, ["common", "challenging"], metric="fr", digits=1)
    assert fr.splitlines()[2] == "| ASMNet | 0.0 | 0.0 |"
    assert subset_table(results, ["full"], metric="count").splitlines()[2] == "| ASMNet | 3 |"


def test_subset_table_wflw_columns_and_pose():
    s = summarize([0.1], pose_pred=np.array([[3.0, 0, 0]]), pose_gt=np.zeros((1, 3)))
    table = subset_table({"ASMNet": {"test": s, "makeup": s}}, COLUMNS_WFLW, metric="pose_mae.yaw")
    header, _, row = table.splitlines()
    assert header == ("| model | test | pose | expression | illumination | make-up | occlusion "
                      "| blur |")
    assert row == "| ASMNet | 3.00 | - | - | - | 3.00 | - | - |"


# --------------------------------------------------------------------- accumulator


def test_accumulator_drops_masked_rows():
    rng = np.random.default_rng(19)
    gt = np.stack([_face(68, 20 + i) for i in range(5)])
    pred = gt + rng.normal(0, 1.0, gt.shape)
    pose_gt, pose_pred = rng.normal(0, 20, (5, 3)), rng.normal(0, 20, (5, 3))
    acc = Accumulator()
    # batch of 4 (3 real + 1 padding row of zeros, which would raise if it were kept)
    pad = lambda a, k: np.concatenate([a, np.zeros((k, *a.shape[1:]))])   # noqa: E731
    acc.add(pad(pred[:3], 1).reshape(4, -1), pad(gt[:3], 1).reshape(4, -1),
            np.array([True, True, True, False]), pad(pose_pred[:3], 1), pad(pose_gt[:3], 1))
    acc.add(pad(pred[3:], 2), pad(gt[3:], 2), np.array([1, 1, 0, 0]),
            pad(pose_pred[3:], 2), pad(pose_gt[3:], 2))
    assert len(acc) == 5 and acc.batches == 2
    np.testing.assert_allclose(acc.gt, gt)
    np.testing.assert_allclose(acc.nme(), per_face_nme(pred, gt))
    np.testing.assert_allclose(acc.nme("box"), per_face_nme(pred, gt, "box"))
    s = acc.summary()
    assert s["count"] == 5
    assert s["pose_mae"] == pytest.approx(pose_mae(pose_pred, pose_gt))
    no_mask = Accumulator()
    no_mask.add(pred, gt)
    np.testing.assert_allclose(no_mask.nme(), per_face_nme(pred, gt))
    assert no_mask.pose_pred is None and "pose_mae" not in no_mask.summary()


def test_accumulator_errors():
    gt = np.stack([_face(68, 30), _face(68, 31)])
    acc = Accumulator()
    with pytest.raises(ValueError, match="no batches"):
        acc.nme()
    with pytest.raises(ValueError, match=r"batch 0: mask must be \(2,\)"):
        acc.add(gt, gt, np.ones(3, bool))
    with pytest.raises(ValueError, match="boolean or 0/1"):
        acc.add(gt, gt, np.array([2, 0]))
    acc.add(gt, gt, pose_pred=np.zeros((2, 3)), pose_gt=np.zeros((2, 3)))
    with pytest.raises(ValueError, match="batch 1: poses given in some batches"):
        acc.add(gt, gt)
    with pytest.raises(ValueError, match="batch 1: 98 landmarks, earlier batches had 68"):
        acc.add(np.zeros((1, 98, 2)), np.zeros((1, 98, 2)))
    with pytest.raises(ValueError, match="does not match"):
        acc.add(gt, gt[:, :67])
    assert len(acc) == 2
