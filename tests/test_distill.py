"""Distillation (config.distill_teacher): the loss by hand, the teacher inside the step, a run
that distils from the session's tiny run, and the one-line errors of a bad teacher."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from asmnet_jax import losses, steps, train
from asmnet_jax.config_base import ConfigError
from conftest import tiny_config


def test_distillation_loss_by_hand():
    student = jnp.array([[0.0, 0.5], [1.0, -1.0]])
    teacher = jnp.array([[0.5, 0.5], [1.0, 1.0]])
    pose, teacher_pose = jnp.array([[0.1, 0.2, 0.3]] * 2), jnp.array([[0.1, 0.0, 0.6]] * 2)
    pose_mse = (0.0 + 0.04 + 0.09) / 3
    l2 = losses.distillation_loss(student, pose, teacher, teacher_pose, "l2")
    assert float(l2) == pytest.approx((0.25 + 0 + 0 + 4) / 4 + 0.5 * pose_mse)
    l1 = losses.distillation_loss(student, pose, teacher, teacher_pose, "l1")
    assert float(l1) == pytest.approx((0.5 + 0 + 0 + 2) / 4 + 0.5 * pose_mse)
    wing = losses.distillation_loss(student, pose, teacher, teacher_pose, "wing", (1.0, 0.5),
                                    pose_weight=0.0)
    offset = 1.0 - np.log1p(1.0 / 0.5)   # |x| - C beyond the width 1, w ln(1 + |x|/eps) below
    assert float(wing) == pytest.approx((np.log1p(0.5 / 0.5) + 0 + 0 + 2 - offset) / 4)
    # The teacher's predictions are targets: no gradient reaches them.
    grads = jax.grad(lambda t, tp: losses.distillation_loss(student, pose, t, tp),
                     argnums=(0, 1))(teacher, teacher_pose)
    assert all(float(jnp.max(jnp.abs(g))) == 0.0 for g in grads)


def test_total_loss_adds_the_weighted_distillation_term():
    rng = np.random.default_rng(0)
    gt, pred, teacher = (jnp.asarray(rng.normal(size=(4, 10)), jnp.float32) for _ in range(3))
    pose_gt, pose_pred, teacher_pose = (jnp.asarray(rng.normal(size=(4, 3)), jnp.float32)
                                        for _ in range(3))
    plain, plain_terms = losses.total_loss(pred, pose_pred, gt, pose_gt, landmark_loss="l1")
    assert "distill" not in plain_terms
    total, terms = losses.total_loss(pred, pose_pred, gt, pose_gt, landmark_loss="l1",
                                     teacher=(teacher, teacher_pose), distill_weight=0.25)
    distill = losses.distillation_loss(pred, pose_pred, teacher, teacher_pose, "l1")
    assert float(terms["distill"]) == pytest.approx(float(distill))
    assert float(total) == pytest.approx(float(plain) + 0.25 * float(distill))
    assert float(terms["total"]) == float(total)
    zero, _ = losses.total_loss(pred, pose_pred, gt, pose_gt, landmark_loss="l1",
                                teacher=(teacher, teacher_pose), distill_weight=0.0)
    assert float(zero) == float(plain)


def test_a_teacher_of_another_size_sees_the_crops_resized():
    """A 64 px teacher of a 32 px student: the step resizes the batch (bilinear) on the device."""
    from asmnet_jax.models import build_model

    model = build_model(tiny_config())
    variables = jax.jit(model.init)(jax.random.key(0), jnp.zeros((1, 32, 32, 3)))
    images = jnp.asarray(np.random.default_rng(0).uniform(size=(2, 32, 32, 3)), jnp.float32)
    predict = jax.jit(steps.teacher_predictions, static_argnums=0)
    landmarks, pose = predict(steps.Teacher(model, 64), variables, images)
    resized = jax.image.resize(images, (2, 64, 64, 3), "bilinear")
    want_landmarks, want_pose = jax.jit(model.apply)(variables, resized)
    assert landmarks.shape == (2, 136) and pose.shape == (2, 3)
    np.testing.assert_allclose(landmarks, want_landmarks, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(pose, want_pose, rtol=1e-5, atol=1e-6)
    same, _ = predict(steps.Teacher(model, 32), variables, images)   # no resize at its size
    np.testing.assert_allclose(same, jax.jit(model.apply)(variables, images)[0], rtol=1e-5,
                               atol=1e-6)


def _train_rows(workdir):
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return {r["step"]: r for r in map(json.loads, f) if r["kind"] == "train"}


def test_a_run_distils_from_the_session_run_and_weight_zero_changes_nothing(tiny_run, tmp_path):
    teacher_dir, _ = tiny_run
    plain = _train_rows(teacher_dir)
    assert all(row["distill"] == 0.0 for row in plain.values())   # logged as 0 without a teacher
    # Two steps of the session's run, supervised by the run itself (its best checkpoint).
    distilled = train.train_and_evaluate(
        tiny_config(distill_teacher=teacher_dir, max_steps=2), str(tmp_path / "distilled"))
    assert distilled["step"] == 2 and np.isfinite(distilled["val_nme"])
    row = _train_rows(str(tmp_path / "distilled"))[2]
    assert row["distill"] > 0
    assert row["total"] == pytest.approx(row["facial"] + 0.5 * row["pose"] + row["head_l2"]
                                         + row["distill"], rel=1e-5)
    with open(tmp_path / "distilled" / "config.json") as f:
        assert json.load(f)["distill_teacher"] == teacher_dir
    # With weight 0 the teacher runs but the run trains as without it. Not to the bit: the
    # teacher's ops change how XLA fuses the student's (in this resident step, as any other
    # added output would), which moves the float32 rounding of its forward pass (~1e-6).
    # (Step 1 trains at learning rate 0, the warm-up's start: step 2 sees the same weights.)
    train.train_and_evaluate(tiny_config(distill_teacher=teacher_dir, distill_weight=0.0,
                                         max_steps=2), str(tmp_path / "weight0"))
    row = _train_rows(str(tmp_path / "weight0"))[2]
    assert row["distill"] > 0
    for key in ("total", "mse", "asm", "pose", "head_l2"):
        assert row[key] == pytest.approx(plain[2][key], rel=1e-4), key
    assert abs(row["total"] - plain[2]["total"]) < 1e-3 * row["distill"]


def test_a_missing_teacher_is_one_line_naming_the_key(tmp_path):
    missing = tmp_path / "no_such_run"
    with pytest.raises(ConfigError, match=r"^config.distill_teacher: .*no_such_run: no such file "
                       r"or directory, and not the name of a model shipped"):
        train.prepare(tiny_config(distill_teacher=str(missing)), str(tmp_path / "run"))
    assert not (tmp_path / "run").exists()
    with pytest.raises(ConfigError, match=r"^config.distill_teacher: .*neither a training "
                       r"workdir"):
        train.prepare(tiny_config(distill_teacher=str(tmp_path)), str(tmp_path / "run"))
    assert not (tmp_path / "run").exists()


def test_a_teacher_with_another_landmark_count_is_refused(tiny_run, tmp_path):
    with pytest.raises(ConfigError) as error:
        train.prepare(tiny_config(num_landmarks=98, distill_teacher=tiny_run[0]),
                      str(tmp_path / "run"))
    message = str(error.value)
    assert "\n" not in message
    assert message.startswith("config.distill_teacher: ")
    assert message.endswith("predicts 68 landmarks, but this run trains 98 "
                            "(config.num_landmarks)")
    assert not (tmp_path / "run").exists()
