"""experiments.bench_predict: the jitter / NME helpers on toy cases with known motion, and the
script end to end on a tiny video (12 frames, 320 x 240, two conditions) with the shipped model."""

import json
import math

import numpy as np
import pytest

from experiments import bench_predict as B

rng = np.random.default_rng(0)
#: A reference face in the photo: 68 points, outer eye corners 40 px apart.
REFERENCE = rng.uniform(100, 200, (68, 2))
REFERENCE[36], REFERENCE[45] = [120.0, 130.0], [160.0, 130.0]
IOD = 40.0


def _motion(frames=20):
    return [B.affine(0.8 + 0.02 * t, 3.0 * t, REFERENCE.mean(0), (300 + 5 * t, 200 - 2 * t))
            for t in range(frames)]


def test_affine_round_trip():
    matrix = B.affine(1.3, 25.0, (10, 20), (100, 50))
    np.testing.assert_allclose(B.apply(matrix, [10, 20]), [100, 50], atol=1e-9)
    points = rng.normal(size=(5, 2)) * 50
    np.testing.assert_allclose(B.apply(B.invert(matrix), B.apply(matrix, points)), points,
                               atol=1e-9)
    # a similarity: distances scale by 1.3
    assert B.inter_ocular(B.apply(matrix, REFERENCE)) == pytest.approx(1.3 * IOD)


def test_perfect_predictions_have_no_jitter_and_no_error():
    matrices = _motion()
    predicted = [B.apply(m, REFERENCE) for m in matrices]
    assert B.jitter_percent(predicted, matrices, REFERENCE) == pytest.approx(0.0, abs=1e-9)
    assert B.roughness_percent(predicted, matrices, REFERENCE) == pytest.approx(0.0, abs=1e-9)
    for points, m in zip(predicted, matrices):
        assert B.nme_percent(points, B.apply(m, REFERENCE)) == pytest.approx(0.0, abs=1e-9)


def test_constant_offset_is_error_not_jitter():
    matrices = _motion()
    offset = np.array([2.0, 0.0])  # photo pixels: 5 % of the inter-ocular distance
    predicted = [B.apply(m, REFERENCE + offset) for m in matrices]
    assert B.jitter_percent(predicted, matrices, REFERENCE) == pytest.approx(0.0, abs=1e-9)
    for points, m in zip(predicted, matrices):
        assert B.nme_percent(points, B.apply(m, REFERENCE)) == pytest.approx(5.0)


def test_alternating_offset_is_jitter_and_missed_frames_break_pairs():
    matrices = _motion(6)
    offsets = [np.array([0.0, 1.0 if t % 2 else -1.0]) for t in range(6)]
    predicted = [B.apply(m, REFERENCE + o) for m, o in zip(matrices, offsets)]
    # every frame moves 2 px in the photo (5 % of 40 px) and is 2 px off its neighbours' mean
    assert B.jitter_percent(predicted, matrices, REFERENCE) == pytest.approx(5.0)
    assert B.roughness_percent(predicted, matrices, REFERENCE) == pytest.approx(5.0)
    predicted[3] = None
    assert B.jitter_percent(predicted, matrices, REFERENCE) == pytest.approx(5.0)
    assert math.isnan(B.jitter_percent([None, predicted[0]], matrices[:2], REFERENCE))


def test_a_steady_drift_is_jitter_but_not_roughness():
    matrices = _motion(8)
    predicted = [B.apply(m, REFERENCE + [0.4 * t, 0.0]) for t, m in enumerate(matrices)]
    assert B.jitter_percent(predicted, matrices, REFERENCE) == pytest.approx(1.0)
    assert B.roughness_percent(predicted, matrices, REFERENCE) == pytest.approx(0.0, abs=1e-9)


def test_match_faces_nearest_and_none_when_far():
    a, b = REFERENCE, REFERENCE + [300.0, 0.0]
    faces = [b + 1.0, a - 1.0, a + 500.0]
    matched = B.match_faces(faces, [a, b, a + 1000.0])
    np.testing.assert_allclose(matched[0], a - 1.0)
    np.testing.assert_allclose(matched[1], b + 1.0)
    assert matched[2] is None
    assert B.match_faces([], [a]) == [None]


def test_speed_leaves_out_the_warmup():
    stamps = [0.0, 5.0] + [5.0 + 0.02 * i for i in range(1, 11)]
    result = B.speed(stamps, 1)
    assert result["fps"] == pytest.approx(50.0)
    assert result["ms_median"] == pytest.approx(20.0)
    assert result["startup_s"] == pytest.approx(5.0)


def test_script_end_to_end_tiny(tmp_path, capsys):
    out = tmp_path / "bench"
    figure = tmp_path / "frame.jpg"
    code = B.main(["--frames", "12", "--width", "320", "--height", "240", "--warmup", "2",
                   "--videos", "one", "--conditions", "0,5", "--out", str(out),
                   "--figure", str(figure)])
    assert code == 0
    last = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    rows = last["rows"]
    assert [(r["mode"], r["smooth"], r["draw"]) for r in rows] == [
        ("detect every frame", False, False), ("tracking", True, True)]
    assert rows[0]["detections"] == 12 and rows[1]["detections"] < 12
    for row in rows:
        assert row["frames"] == 12 and row["fps"] > 0
        assert row["missed"] == 0 and np.isfinite(row["jitter_pct"])
        assert 0 <= row["nme_pct"] < 50
    saved = json.loads((tmp_path / "bench.json").read_text())
    assert len(saved["rows"]) == 2 and saved["width"] == 320
    assert "| one | tracking | on | on |" in (tmp_path / "bench.md").read_text()
    assert 0 < figure.stat().st_size <= 100_000 and last["figure"]["video"] == "one"
