"""experiments/pose_frame.py: the frame comparison recovers known rotations; the published mean
face parses and is converted to the project's axes without mirroring (docs/pose.md)."""

import json
import os

import numpy as np
import pytest

from asmnet_jax.data import face3d, pose
from experiments import pose_frame

needs_openface = pytest.mark.skipif(not os.path.exists(pose_frame.OPENFACE_CSV),
                                    reason="experiments/data/openface_mean_face_68.csv absent")

ANGLES = [(0.0, 0.0, 0.0), (20.0, 0.0, 0.0), (0.0, 20.0, 0.0), (0.0, 0.0, 20.0),
          (20.0, -10.0, 5.0), (-35.0, 15.0, -25.0), (60.0, 30.0, 10.0), (-120.0, -50.0, 150.0)]


def _angle_error(a, b):
    return np.abs(pose.wrap_degrees(np.asarray(a) - np.asarray(b)))


@pytest.mark.parametrize("angles", ANGLES)
def test_recovers_a_known_rotation_of_the_template(angles):
    template = face3d.mean_face(68)
    # The template at a known pose, also scaled and moved: the comparison must see only the turn.
    turned = 2.5 * template @ pose.rotation_matrix(*angles).T + np.array([0.3, -1.0, 4.0])
    for indices in (None, np.arange(17, 68), face3d.rigid_indices(68)):
        diff = pose_frame.frame_difference(turned, template, indices)
        got = [diff["yaw"], diff["pitch"], diff["roll"]]
        assert np.all(_angle_error(got, angles) < 0.1), (angles, got)
        assert diff["rms_iod"] < 1e-9


@needs_openface
def test_recovers_a_known_rotation_of_the_published_face():
    published = pose_frame.openface_face()
    base = pose_frame.frame_difference(published)
    r0 = pose.rotation_matrix(base["yaw"], base["pitch"], base["roll"])
    for angles in ANGLES:
        rk = pose.rotation_matrix(*angles)
        diff = pose_frame.frame_difference(published @ rk.T)
        expected = pose.euler_angles(rk @ r0)
        assert np.all(_angle_error([diff["yaw"], diff["pitch"], diff["roll"]], expected) < 0.1)
        assert diff["rms_iod"] == pytest.approx(base["rms_iod"], abs=1e-9)


@needs_openface
def test_published_face_parses_to_68_finite_points_in_the_project_axes():
    raw = pose_frame.read_points_csv(pose_frame.OPENFACE_CSV)
    assert raw.shape == (68, 3) and np.all(np.isfinite(raw))
    face = pose_frame.openface_face()
    assert face.shape == (68, 3) and np.all(np.isfinite(face))
    np.testing.assert_allclose(face[pose_frame.NOSE_TIP], 0.0, atol=1e-12)
    assert np.linalg.norm(face[36] - face[45]) == pytest.approx(1.0)
    # Project axes: point 0 (jaw start) on the image left, the brows above the mouth, the chin
    # lowest, the nose tip nearest the viewer (+z).
    assert face[0, 0] < 0 < face[16, 0]
    assert face[17:27, 1].min() > face[48:68, 1].max()
    assert np.argmin(face[:, 1]) == 8
    assert np.argmax(face[:, 2]) == pose_frame.NOSE_TIP
    # The conversion is a rotation (no mirroring): it fits the template far better than a
    # z-only flip, which mirrors the face.
    proper = pose_frame.frame_difference(face)["rms_iod"]
    mirrored = pose_frame.frame_difference(pose_frame.normalise(raw * [1.0, 1.0, -1.0]))["rms_iod"]
    assert proper < 0.1 < 3 * proper < mirrored


def test_direction_angles_follow_the_pose_convention():
    for yaw, pitch, roll in ANGLES[:7]:
        forward = pose.rotation_matrix(yaw, pitch, roll) @ [0.0, 0.0, 1.0]
        np.testing.assert_allclose(pose_frame.direction_angles(forward), [yaw, pitch], atol=1e-9)
    # The template's own face plane faces almost straight at the camera.
    yaw, pitch = pose_frame.direction_angles(pose_frame.face_plane_normal(face3d.mean_face(68)))
    assert abs(yaw) < 1e-9 and abs(pitch) < 2.0


def test_sign_convention_as_documented():
    rows = {row["name"]: row for row in pose_frame.convention_check()}
    assert rows["yaw"]["nose_shift"][0] > 1.0        # +yaw: the nose tip moves to the image right
    assert rows["pitch"]["nose_shift"][1] < -1.0     # +pitch: the nose tip moves up (chin up)
    assert rows["roll"]["eye_line_deg"] == pytest.approx(20.0, abs=0.1)  # +roll: clockwise
    for name in ("yaw", "pitch", "roll"):
        np.testing.assert_allclose(rows[name]["label"], rows[name]["angles"], atol=0.05)


def test_read_points_csv_reports_bad_files(tmp_path):
    good = ["# comment", "index,x,y,z"] + [f"{i},{i},0,1" for i in range(68)]
    path = tmp_path / "face.csv"
    path.write_text("\n".join(good) + "\n")
    assert pose_frame.read_points_csv(path)[67, 0] == 67
    for bad, message in ((good[:-1], "missing"), (good + ["3,1,2,3"], "repeated"),
                         (good[:5] + ["5,1,nan,3"] + good[6:], "non-finite"),
                         (good[:5] + ["5,1,2"] + good[6:], "4 columns")):
        path.write_text("\n".join(bad) + "\n")
        with pytest.raises(ValueError, match=message):
            pose_frame.read_points_csv(path)


@needs_openface
def test_main_prints_a_json_summary(capsys, tmp_path):
    assert pose_frame.main(["--shared-data", str(tmp_path / "absent")]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    summary = json.loads(out[-1])
    assert "spiga" not in summary and "SPIGA's mean face not found" in "\n".join(out)
    assert set(summary["openface"]) >= {"all68", "no_jaw", "plane_normal", "labeller_rigid"}
    # The template's own design frame (before the 4-degree chin-down turn) comes back exactly.
    for key in ("all68", "no_jaw", "rigid", "labeller_rigid", "labeller_all"):
        assert summary["design_frame"][key]["pitch"] == pytest.approx(4.0, abs=0.01)
    assert summary["design_frame"]["plane_normal"]["pitch"] == pytest.approx(4.0, abs=0.01)


def test_spiga_mean_face_when_shared_data_is_present(shared_data):
    face = pose_frame.spiga_face(shared_data)
    if face is None:
        pytest.skip("no reference/mean_face_3d_68.csv in the shared data")
    assert face.shape == (68, 3) and np.all(np.isfinite(face))
    diff = pose_frame.frame_difference(face)
    assert diff["rms_iod"] < 0.1  # the template is close to SPIGA's mean face (test_pose.py)


def test_mirror_label_is_zero_for_the_symmetric_template():
    np.testing.assert_allclose(pose_frame.mirror_label(face3d.mean_face(68)), 0.0, atol=1e-6)


def test_turned_labels_are_exact_for_the_template_shape():
    design = face3d.mean_face(68, design_frame=True)  # the template's shape, another zero
    for name, turned in pose_frame.turned_labels(design).items():
        np.testing.assert_allclose(turned, pose_frame.TURNS[name], atol=0.01)
