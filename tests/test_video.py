"""asmnet-predict on videos: frames, tracking, ids, re-detection, smoothing, outputs, bad input.

The videos are short and synthetic: a bright square (the "face") moving by known shifts on a dark
background, found by a fake detector registered for the test (the bright pixels' bounding box),
which counts its calls. The model is a 64 px ASMNet whose heads output constants (as in
tests/test_predict.py), with landmarks whose bounding box is exactly the face box, so a track's
crop box from its landmarks is the box it was cropped with (a fixed point).
"""

import csv
import json

import cv2
import numpy as np
import pytest

from asmnet_jax import detection, tracking
from asmnet_jax.cli import predict as predict_cli
from asmnet_jax.data import crop
from asmnet_jax.detection import BoxCalibration, DetectorSpec

SIZE, N, MARGIN = 64, 68, 0.2
HALF = 0.5 / (1 + 2 * MARGIN)  # model units of the face box's edge within the crop
_rng = np.random.default_rng(0)
LANDMARKS = _rng.uniform(-HALF, HALF, (N, 2))
LANDMARKS[:2] = [[-HALF, -HALF], [HALF, HALF]]  # the landmarks' box is the face box
LANDMARKS = LANDMARKS.reshape(-1).astype(np.float32)
POSE = np.array([0.3, -0.2, 0.1], np.float32)
W, H, FRAMES, SIDE = 160, 120, 12, 40
SHIFT = 3  # pixels a frame, to the right


def _square_at(index):
    x0, y0 = 30 + SHIFT * index, 40
    return x0, y0, x0 + SIDE, y0 + SIDE


def _frames(count=FRAMES, face=True):
    for index in range(count):
        frame = np.full((H, W, 3), 20, np.uint8)
        if face:
            x0, y0, x1, y1 = _square_at(index)
            frame[y0:y1, x0:x1] = 230
        yield frame


def _write_video(path, frames, fps=10.0):
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (W, H))
    assert writer.isOpened()
    for frame in frames:
        writer.write(frame)
    writer.release()
    return str(path)


def _count_frames(path):
    capture = cv2.VideoCapture(str(path))
    count = 0
    while capture.read()[0]:
        count += 1
    capture.release()
    return count


class FakeDetector:
    """The bounding box of the bright pixels; counts its calls; ``fail_at``: the call that raises
    KeyboardInterrupt (a Ctrl-C); ``blind``: finds nothing."""

    def __init__(self, fail_at=None, blind=False):
        self.calls, self.fail_at, self.blind = 0, fail_at, blind

    def __call__(self, image):
        self.calls += 1
        if self.fail_at is not None and self.calls > self.fail_at:
            raise KeyboardInterrupt
        ys, xs = np.nonzero(image[..., 0] > 128)
        if self.blind or not len(xs):
            return np.zeros((0, 5), np.float32)
        return np.array([[xs.min(), ys.min(), xs.max() + 1, ys.max() + 1, 0.9]], np.float32)


@pytest.fixture
def fake_detector(monkeypatch):
    made = {}

    def register(**kwargs):
        made["detector"] = FakeDetector(**kwargs)
        monkeypatch.setitem(detection.DETECTORS, "fake", DetectorSpec(
            "fake", "test", lambda min_score: made["detector"], lambda: None, BoxCalibration()))
        return made["detector"]

    return register


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    from tests.test_predict import save_constant_model

    return save_constant_model(tmp_path_factory.mktemp("model") / "constant", LANDMARKS, POSE,
                               margin=MARGIN)


@pytest.fixture(scope="module")
def video(tmp_path_factory):
    return _write_video(tmp_path_factory.mktemp("video") / "clip.mp4", _frames())


def _main(argv, capsys):
    code = predict_cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def _lines(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


# --------------------------------------------------------------------------------------------------
# The One Euro filter, matching, the tracker without a model


def test_one_euro_keeps_a_constant_and_lags_then_converges_on_a_step():
    f = tracking.OneEuroFilter(min_cutoff=1.0, beta=0.0)
    constant = np.array([[3.0, -2.0], [0.5, 7.0]])
    for i in range(20):
        np.testing.assert_allclose(f(constant, i / 30), constant)
    out = [f(constant + 10.0, (20 + i) / 30) for i in range(200)]
    step = np.array([o[0, 0] - constant[0, 0] for o in out])
    assert 0 < step[0] < 5 and np.all(np.diff(step) >= 0)  # lags, then rises monotonically
    assert step[-1] == pytest.approx(10.0, abs=1e-3)
    fast = tracking.OneEuroFilter(min_cutoff=1.0, beta=1.0)  # speed raises the cutoff: less lag
    fast(constant, 0.0)
    assert fast(constant + 10.0, 1 / 30)[0, 0] - constant[0, 0] > step[0]


def _face_shape(rng):
    return rng.normal(size=(N, 2))


def _similar(shape, centre, scale, angle):
    c, s = np.cos(angle), np.sin(angle)
    return scale * shape @ np.array([[c, -s], [s, c]]).T + centre


def test_fit_similarity_recovers_a_known_transform():
    rng = np.random.default_rng(1)
    template = _face_shape(rng)
    template -= template.mean(axis=0)
    centre, scale, angle = tracking.fit_similarity(template, _similar(template, [50, -20], 3.5,
                                                                      0.4))
    np.testing.assert_allclose(centre, [50, -20], atol=1e-9)
    assert scale == pytest.approx(3.5) and angle == pytest.approx(0.4)


def test_shape_smoother_follows_motion_without_lag_and_damps_noise():
    """A face moving fast (a face width a second, turning and growing) with its landmarks wobbling
    by noise: the two-part smoother's output stays close to the true moving face (little lag) and
    moves much less from frame to frame than the noise once the motion is undone; one One Euro
    filter over the pixels must choose between the two."""
    rng = np.random.default_rng(2)
    shape = _face_shape(rng) * 10.0
    truth, noisy = [], []
    for i in range(150):
        t = i / 30
        pose = ([200 + 60 * np.sin(t * 2.0), 150 + 40 * np.sin(t * 1.3)],
                1 + 0.15 * np.sin(t * 1.2), 0.17 * np.sin(t * 1.7))
        truth.append((_similar(shape, *pose), pose))
        noisy.append(truth[-1][0] + rng.normal(scale=0.6, size=shape.shape))

    def run(smoother):
        out = [smoother(points, i / 30) for i, points in enumerate(noisy)]
        error = np.mean([np.abs(o - t).mean() for o, (t, _) in zip(out, truth)][30:])
        back = [_similar(o - p[0], [0, 0], 1 / p[1], -p[2]) for o, (_, p) in zip(out, truth)]
        jitter = np.mean([np.abs(b - a).mean() for a, b in zip(back[30:], back[31:])])
        return error, jitter

    raw_error, raw_jitter = run(lambda points, time: points)
    error, jitter = run(tracking.ShapeSmoother())
    assert jitter < raw_jitter / 2 and error < 1.2 * raw_error
    pixel_error, pixel_jitter = run(tracking.OneEuroFilter(1.0, 0.02))
    assert pixel_error > 2 * error  # one filter over pixels: lag under this motion
    still = tracking.ShapeSmoother()
    assert np.allclose(still(shape, 0.0), shape)  # the first frame passes through


def test_shape_smoother_follows_a_fast_expression_change():
    """A mouth opening by a third of the face's radius in a fifth of a second on a still face: the
    shape filter's speed term lets it through (90 % of the change within 0.1 s of its end),
    where the same filter without it (shape_beta=0) is still a second behind."""
    rng = np.random.default_rng(3)
    face = _face_shape(rng)
    face = (face - face.mean(axis=0)) / np.sqrt(((face - face.mean(axis=0)) ** 2).sum(1).mean())
    mouth = np.arange(48, 68)
    direction = np.sign(face[mouth, 1] - face[mouth, 1].mean())

    def reached(smoother):
        out = []
        for i in range(60):
            t = i / 30
            shape = face.copy()
            shape[mouth, 1] += 0.3 * np.clip((t - 1.0) / 0.2, 0, 1) * direction
            out.append((smoother(100 * shape + 300, t) - 300) / 100)
        moved = np.array([(o[mouth, 1] - face[mouth, 1]) @ direction for o in out])
        return moved / (0.3 * len(mouth))

    assert reached(tracking.ShapeSmoother())[int(30 * 1.3)] >= 0.9  # 0.1 s after the change
    assert reached(tracking.ShapeSmoother(shape_beta=0.0))[int(30 * 1.3)] < 0.5


def test_extrapolate_moves_a_box_on_by_its_last_motion():
    a, b = crop.SquareBox(10, 20, 40), crop.SquareBox(13, 18, 44)
    assert tracking.extrapolate(b, tracking.motion_between(a, b)) == pytest.approx(
        (16, 16, 48.4))


def test_greedy_matching_by_iou():
    a = [crop.SquareBox(50, 50, 20), crop.SquareBox(100, 50, 20)]
    b = [crop.SquareBox(102, 50, 20), crop.SquareBox(300, 300, 20), crop.SquareBox(51, 50, 20)]
    iou = tracking.iou_matrix(a, b)
    assert iou.shape == (2, 3)
    assert sorted(tracking.greedy_match(iou)) == [(0, 2), (1, 0)]
    assert tracking.greedy_match(iou, threshold=0.99) == []


def _constant_predict(batch):
    count = len(batch)
    return np.tile(LANDMARKS, (count, 1)), np.tile(POSE, (count, 1))


def test_tracker_detects_every_k_frames_and_keeps_ids():
    detect = FakeDetector()
    tracker = tracking.Tracker(_constant_predict, SIZE, MARGIN, detect=detect, detect_every=4)
    calls, ids = [], []
    for index, frame in enumerate(_frames()):
        before = detect.calls
        faces = tracker.step(frame[..., ::-1].copy(), index, index / 10)
        calls.append(detect.calls - before)
        ids.append([f["id"] for f in faces])
    assert calls == [1 if i % 4 == 0 else 0 for i in range(FRAMES)]
    assert ids == [[0]] * FRAMES
    # Between detections the crop box is the previous landmarks' box (here a fixed point: the
    # constant model's landmarks follow the crop, so they measure no motion between tracked frames).
    assert tracker.tracks[0].next_box.side == pytest.approx(SIDE, rel=1e-4)


def _seeing_predict(batch):
    """A "model" that finds the bright square in each crop: landmarks spanning its bounding box."""
    landmarks = []
    for crop_image in np.asarray(batch):
        ys, xs = np.nonzero(crop_image[..., 0] > 128)
        lo = np.array([xs.min(), ys.min()]) / SIZE - 0.5
        hi = np.array([xs.max() + 1, ys.max() + 1]) / SIZE - 0.5
        unit = LANDMARKS.reshape(N, 2) / (2 * HALF) + 0.5  # 0..1 over the landmarks' box
        landmarks.append((lo + unit * (hi - lo)).reshape(-1))
    return np.asarray(landmarks, np.float32), np.tile(POSE, (len(batch), 1))


def test_tracker_moves_the_crop_on_by_the_measured_motion():
    """The square moves 3 pixels a frame: tracked crops cut where the previous landmarks were lag
    3 pixels behind the face; moved on by the motion measured from the frame before (from the
    first tracked frame on), they are centred on it."""
    def offsets(predict_motion):
        tracker = tracking.Tracker(_seeing_predict, SIZE, MARGIN, detect=FakeDetector(),
                                   detect_every=100, smooth=False, predict_motion=predict_motion)
        out = []
        for index, frame in enumerate(_frames(8)):
            faces = tracker.step(frame, index, index / 10)
            x0, _, x1, _ = _square_at(index)
            out.append(faces[0]["face_box"].cx - (x0 + x1) / 2)
        return np.array(out)

    plain, moved = offsets(False), offsets(True)
    # The box is found to a pixel of the crop (56 pixels of the frame in 64), and moving it on by
    # a measured motion adds that error again: the mean offset is the test.
    assert plain[1:].mean() == pytest.approx(-SHIFT, abs=0.7) and plain[1:].max() < -2
    assert moved[1] == pytest.approx(-SHIFT, abs=1.0)
    assert abs(moved[2:].mean()) < 0.7 and np.abs(moved[2:]).max() < 1.5


def test_tracker_redetects_after_a_low_shape_score_and_ends_unmatched_tracks():
    detect = FakeDetector()
    tracker = tracking.Tracker(_constant_predict, SIZE, MARGIN, detect=detect, detect_every=100,
                               plausibility=lambda lm: {"score": np.full(len(lm), 0.1)})
    for index, frame in enumerate(_frames(5)):
        tracker.step(frame, index, index / 10)
    assert detect.calls == 5  # the score 0.1 < 0.3 asks for a detection every frame
    far = tracking.Tracker(_constant_predict, SIZE, MARGIN, detect=detect, detect_every=1,
                           smooth=False)
    frames = list(_frames(2))
    assert [f["id"] for f in far.step(frames[0], 0, 0.0)] == [0]
    moved = np.roll(frames[1], 70, axis=1)  # the face jumps: no overlap, a new track
    assert [f["id"] for f in far.step(moved, 1, 0.1)] == [1]


# --------------------------------------------------------------------------------------------------
# The command


def test_video_gives_a_json_line_per_frame_stable_ids_and_an_annotated_video(
        model_dir, video, fake_detector, tmp_path, capsys):
    detect = fake_detector()
    out = tmp_path / "out"
    code, stdout, err = _main([video, "--model", model_dir, "--out", out, "--detector", "fake",
                               "--detect-every", 5], capsys)
    assert code == 0, err
    summary = json.loads(stdout.strip().splitlines()[-1])
    assert summary["frames"] == FRAMES and summary["tracks"] == 1 and summary["detections"] == 3
    assert detect.calls == 3  # frames 0, 5, 10
    lines = _lines(out / "predictions.jsonl")
    assert [line["frame"] for line in lines] == list(range(FRAMES))
    assert np.allclose([line["time"] for line in lines], np.arange(FRAMES) / 10.0)
    assert all([f["id"] for f in line["faces"]] == [0] for line in lines)
    sources = [line["faces"][0]["box_source"] for line in lines]
    assert sources == ["detector" if i % 5 == 0 else "tracked" for i in range(FRAMES)]
    face = lines[0]["faces"][0]
    assert len(face["landmarks"]) == N and {"yaw", "pitch", "roll", "box", "score"} <= set(face)
    assert face["yaw"] == pytest.approx(np.degrees(0.3), abs=1e-2)
    assert _count_frames(summary["annotated_video"]) == FRAMES

    # --no-smooth: the raw predictions, which jump at the re-detections; the smoothed ones lag a little.
    raw_out = tmp_path / "raw"
    code, stdout, err = _main([video, "--model", model_dir, "--out", raw_out, "--detector",
                               "fake", "--detect-every", 5, "--no-smooth", "--no-draw",
                               "--format", "csv"], capsys)
    assert code == 0, err
    with open(raw_out / "predictions.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == FRAMES and [int(r["frame"]) for r in rows] == list(range(FRAMES))
    assert {r["id"] for r in rows} == {"0"} and float(rows[3]["time"]) == pytest.approx(0.3)
    assert not (raw_out / "clip.annotated.mp4").exists()
    smooth_x = np.array([line["faces"][0]["landmarks"][0][0] for line in lines])
    raw_x = np.array([float(r["x0"]) for r in rows])
    assert smooth_x[0] == pytest.approx(raw_x[0], abs=1e-3)
    assert raw_x[4] + 1.0 < smooth_x[5] < raw_x[5] - 0.1  # follows the jump, a little behind


def test_video_without_a_face_lists_every_frame(model_dir, fake_detector, tmp_path, capsys):
    detect = fake_detector(blind=True)
    path = _write_video(tmp_path / "empty.avi", _frames(6, face=False))
    code, stdout, err = _main([path, "--model", model_dir, "--out", tmp_path / "out", "--detector",
                               "fake", "--no-draw"], capsys)
    assert code == 0, err
    lines = _lines(tmp_path / "out" / "predictions.jsonl")
    assert [(line["frame"], line["faces"]) for line in lines] == [(i, []) for i in range(6)]
    assert detect.calls == 6 and "no face found in 6 frames" in err


def test_ctrl_c_leaves_valid_json_lines_up_to_the_last_frame(model_dir, fake_detector, tmp_path,
                                                             capsys):
    fake_detector(fail_at=3, blind=True)  # frames 0-2 have no face; frame 3 is interrupted
    path = _write_video(tmp_path / "clip.mp4", _frames(8))
    code, stdout, err = _main([path, "--model", model_dir, "--out", tmp_path / "out", "--detector",
                               "fake"], capsys)
    assert code == 1 and len(err.strip().splitlines()) == 1
    assert err.startswith("asmnet-predict: error: ") and "interrupted after 3 frames" in err
    assert [line["frame"] for line in _lines(tmp_path / "out" / "predictions.jsonl")] == [0, 1, 2]
    assert _count_frames(tmp_path / "out" / "clip.annotated.mp4") == 3


def test_bad_videos_and_cameras_are_one_line_errors(model_dir, video, fake_detector, tmp_path,
                                                    capsys):
    fake_detector()
    garbage = tmp_path / "garbage.mp4"
    garbage.write_bytes(b"not a video at all" * 10)
    truncated = tmp_path / "truncated.mp4"
    truncated.write_bytes(open(video, "rb").read()[:400])
    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    cases = [([garbage], f"{garbage}: not a readable video"),
             ([truncated], f"{truncated}:"),
             ([empty], f"{empty}: not a readable video"),
             ([tmp_path / "missing.mp4"], "missing.mp4: no such file"),
             (["--webcam", 7], "--webcam 7: cannot open camera 7"),
             ([video, video], "a video is read on its own"),
             ([video, "--detect-every", 0], "--detect-every must be at least 1"),
             ([video, "--smooth-shape-cutoff", 0], "--smooth-shape-cutoff must be > 0"),
             ([video, "--smooth-beta", "nan"], "--smooth-beta >= 0 (finite), got 1 and nan"),
             ([video, "--boxes", garbage], "--boxes is for photos")]
    for argv, message in cases:
        code, stdout, err = _main(list(argv) + ["--model", model_dir, "--detector", "fake",
                                                "--out", tmp_path / "out"], capsys)
        assert code == 1, (argv, err)
        assert err.startswith("asmnet-predict: error: ") and message in err, (argv, err)
        assert len(err.strip().splitlines()) == 1, err
