"""Training: config checks, the CLI end to end, exact resume, and divergence handling.

Runs are tiny (32 x 32 synthetic faces, batch 8) so that a compile dominates; the session's
persistent XLA cache (conftest) lets later runs reuse it.
"""

import dataclasses
import json
import math
import os
import platform
import subprocess
import sys

import jax
import numpy as np
import pytest

from asmnet_jax.models import build_model
from asmnet_jax import mesh as mesh_lib
from asmnet_jax import config_base, run_dir, train
from asmnet_jax.data import resident
from asmnet_jax.config_base import base_config
from conftest import tiny_config, tiny_flags


def _params(workdir):
    step, state, meta = run_dir.read_checkpoint(workdir, which="latest")
    assert meta["step"] == step
    return step, state


def _max_difference(a, b):
    leaves = jax.tree_util.tree_map(
        lambda x, y: float(np.max(np.abs(np.asarray(x, np.float64) - np.asarray(y, np.float64)))),
        a, b)
    return max(jax.tree_util.tree_leaves(leaves))


@pytest.mark.parametrize("key,value,message", [
    ("num_landmarks", 98, "does not match dataset"),
    ("input_size", 40, "multiple of 32"),
    ("optimizer.schedule", "linear", "optimizer.schedule"),
    ("model", "resnet", "config.model"),
    ("depthwise_impl", "fast", r"config.depthwise_impl: 'fast' is not one of"),
    ("landmark_loss", "huber", r"config.landmark_loss: 'huber' is not one of"),
    ("wing_width", 0.0, r"config.wing_width: 0.0: must be positive"),
    ("input_range", "zero", r"config.input_range: 'zero' is not one of"),
    ("init", "keras", r"config.init: 'keras' is not one of"),
    ("init", "checkpoint", r"config.init_path: init='checkpoint' needs"),
    ("init", "imagenet", r"config.input_range: ImageNet MobileNetV2 was trained on inputs in"),
    ("init_bn_images", -1, r"config.init_bn_images"),
    ("log_every_steps", 0, r"config.log_every_steps: 0: must be positive"),
    ("eval_every_epochs", 0, r"config.eval_every_epochs: 0: must be positive"),
    ("checkpoint_every_epochs", 0, r"config.checkpoint_every_epochs: 0: must be positive"),
    ("keep_checkpoints", 0, r"config.keep_checkpoints: 0: at least the latest"),
    ("num_workers", -3, r"config.num_workers: -3 is negative"),
    ("input", "gpu", r"config.input: 'gpu' is not one of \('auto', 'device', 'host'\)"),
    ("margin", -0.1, r"config.margin: -0.1 is not in \[0, 1\)"),
    ("dropout_rate", 1.0, r"config.dropout_rate"),
    ("head_l2", -0.01, r"config.head_l2"),
    ("distill_weight", -1.0, r"^config.distill_weight: -1.0 is negative$"),
    ("max_steps", 0, r"config.max_steps: 0: must be positive, or -1"),
    ("batch_size", 0, r"config.batch_size: must be positive"),
    ("num_epochs", 0, r"config.num_epochs"),
    ("asm_variance", 1.0, r"config.asm_variance"),
    ("bn_momentum", 1.0, r"config.bn_momentum"),
    ("synthetic.train", 0, r"config.synthetic.train: 0: must be positive"),
    ("val_split", "", r"config.train_split: the train and validation split names"),
    ("optimizer.learning_rate", -0.1, r"config.optimizer.learning_rate: -0.1: must be positive"),
    ("optimizer.warmup_epochs", -1.0, r"config.optimizer.warmup_epochs"),
    ("optimizer.weight_decay", -1e-4, r"config.optimizer.weight_decay"),
    ("optimizer.b1", 1.0, r"config.optimizer.b1"),
    ("optimizer.b2", -0.5, r"config.optimizer.b2"),
    ("optimizer.grad_clip", -1.0, r"config.optimizer.grad_clip"),
    ("optimizer.name", "lamb", r"config.optimizer.name"),
    ("augment.rotation_deg", -5.0, r"^config.augment.rotation_deg=-5.0: must be >= 0$"),
])
def test_bad_config_values_name_the_key(key, value, message):
    # input_range "unit" so that init="imagenet" has a range to reject.
    c = tiny_config(input_range="unit", **({"dataset": "w300"} if key == "num_landmarks" else {}))
    c.unlock()
    target = c
    *parents, leaf = key.split(".")
    for parent in parents:
        target = target[parent]
    target[leaf] = value
    with pytest.raises(config_base.ConfigError, match=message):
        config_base.check_config(c)


def test_unknown_config_key_is_rejected():
    c = tiny_config()
    c.unlock()
    c.learning_rate = 0.1  # belongs under optimizer
    with pytest.raises(config_base.ConfigError, match=r"^unknown config key config.learning_rate; "
                       r"did you mean config.optimizer.learning_rate\?$"):
        config_base.check_config(c)


@pytest.mark.parametrize("name,meant", [
    ("learning_rate", "optimizer.learning_rate"),   # right name, wrong place
    ("batchsize", "batch_size"),                     # misspelt
    ("optimizer.warmup", "optimizer.warmup_epochs"),
    ("optimizer.lr", "optimizer.learning_rate"),    # initials
    ("augment.rotation", "augment.rotation_deg"),
    ("zzzz", None),
])
def test_closest_key_finds_the_key_meant(name, meant):
    from asmnet_jax.config_base import closest_key
    assert closest_key(name) == meant


@pytest.fixture
def uninterrupted(tiny_run):
    """The session's tiny run: 12 steps, uninterrupted."""
    return tiny_run


def test_a_run_trains_evaluates_and_writes_its_figures(uninterrupted):
    workdir, summary = uninterrupted
    assert summary["step"] == 12
    assert summary["input"] == "device"  # "auto": 32 tiny faces fit anywhere
    assert math.isfinite(summary["val_nme"]) and summary["val_nme"] > 0
    assert set(summary["val_pose_mae"]) == {"yaw", "pitch", "roll", "mean"}
    with open(os.path.join(workdir, "metrics.json")) as f:
        assert json.load(f)["step"] == 12
    for name in ("config.json", "asm.npz", "metrics.jsonl"):
        assert os.path.exists(os.path.join(workdir, name))
    records = [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]
    train_rows = [r for r in records if r["kind"] == "train"]
    val_rows = [r for r in records if r["kind"] == "val"]
    assert len(val_rows) == 3  # one evaluation per epoch
    # Each evaluation and save is timed, so a slow loop shows where its time goes.
    time_rows = [r for r in records if r["kind"] == "time"]
    assert [r["step"] for r in time_rows] == [r["step"] for r in val_rows]
    assert all(r["eval_s"] > 0 and r["save_s"] > 0 for r in time_rows)
    assert {"mse", "asm", "alpha", "pose", "head_l2", "learning_rate", "img_per_s"} <= set(
        train_rows[0])
    # The alpha schedule moves with the epoch inside the compiled step: 2, 1, 0.5 for 3 epochs.
    alphas = {int(r["epoch"]): r["alpha"] for r in train_rows}
    assert alphas == {0: 2.0, 1: 1.0, 2: 0.5}
    assert os.listdir(os.path.join(workdir, "tensorboard"))


def test_a_killed_and_resumed_run_ends_with_the_same_parameters(uninterrupted, tmp_path):
    reference_dir, _ = uninterrupted
    workdir = str(tmp_path / "interrupted")
    first = train.train_and_evaluate(tiny_config(max_steps=5), workdir)
    assert first["step"] == 5
    resumed = train.train_and_evaluate(tiny_config(), workdir)
    assert resumed["step"] == 12
    step_a, state_a = _params(reference_dir)
    step_b, state_b = _params(workdir)
    assert step_a == step_b == 12
    assert _max_difference(state_a["params"], state_b["params"]) == 0.0
    assert _max_difference(state_a["batch_stats"], state_b["batch_stats"]) == 0.0
    assert _max_difference(state_a["opt_state"], state_b["opt_state"]) == 0.0


def test_the_host_input_path_trains_and_resumes_exactly(tiny_host_run, tmp_path):
    """The default run takes the device path on this machine; the host pipeline (grain and
    OpenCV) is the other path and must resume as exactly."""
    reference_dir, reference = tiny_host_run
    assert reference["input"] == "host" and math.isfinite(reference["val_nme"])
    workdir = str(tmp_path / "interrupted")
    assert train.train_and_evaluate(tiny_config(input="host", max_steps=5), workdir)["step"] == 5
    assert train.train_and_evaluate(tiny_config(input="host"), workdir)["step"] == 12
    _, state_a = _params(reference_dir)
    _, state_b = _params(workdir)
    assert _max_difference(state_a["params"], state_b["params"]) == 0.0
    assert _max_difference(state_a["opt_state"], state_b["opt_state"]) == 0.0


def test_a_corrupt_latest_checkpoint_falls_back_to_the_previous(uninterrupted, tmp_path, caplog):
    import shutil

    workdir = str(tmp_path / "corrupt")
    shutil.copytree(uninterrupted[0], workdir)
    checkpoints = os.path.join(workdir, "checkpoints")
    steps = sorted(int(d) for d in os.listdir(checkpoints) if d.isdigit())
    latest = os.path.join(checkpoints, str(steps[-1]), "state")
    for root, _, files in os.walk(latest):
        for name in files:
            with open(os.path.join(root, name), "wb") as f:
                f.write(b"garbage")
    # The run's own model, optimizer and init program (kept by the process: nothing recompiles).
    _, optimizer = train.schedule_and_optimizer(tiny_config().optimizer, 4, 12)
    template = train.steps_lib.with_ema(train.steps_lib.create_train_state(
        build_model(tiny_config(), bn_axis_name=mesh_lib.DATA_AXIS), optimizer,
        jax.random.key(0), 32))
    ckpt = run_dir.Checkpoints(os.path.dirname(checkpoints), 2)
    try:
        state, meta = ckpt.restore_latest(jax.tree_util.tree_map(
            train.ocp.utils.to_shape_dtype_struct, template))
    finally:
        ckpt.close()
    assert meta["step"] == steps[-2]
    assert int(state.step) == steps[-2]
    assert "cannot be restored" in caplog.text


def test_a_nan_loss_stops_the_run_and_keeps_the_last_good_checkpoint(uninterrupted, tmp_path,
                                                                   monkeypatch):
    import shutil

    workdir = str(tmp_path / "diverging")
    shutil.copytree(uninterrupted[0], workdir)
    shutil.rmtree(os.path.join(workdir, "checkpoints", "12"))
    # The run resumes at step 8 with the same compiled programs (a huge learning rate would
    # compile new ones), its resident faces carrying NaN landmarks: step 9's loss is NaN, and
    # the check on the next logging step (10) stops the run.
    place = resident.place

    def poisoned(arrays, *args):
        arrays = dataclasses.replace(arrays, landmarks=np.full_like(arrays.landmarks, np.nan))
        return place(arrays, *args)

    monkeypatch.setattr(resident, "place", poisoned)
    with pytest.raises(train.TrainingDiverged, match="loss became nan .* at step 10"):
        train.train_and_evaluate(tiny_config(), workdir)
    step, state = _params(workdir)
    assert step == 8
    _, reference, _ = run_dir.read_checkpoint(uninterrupted[0], step=8)
    assert _max_difference(state["params"], reference["params"]) == 0.0


def test_the_cli_runs_the_default_config_end_to_end(tiny_run, tmp_path):
    workdir = tmp_path / "cli"
    # The tiny run's settings (conftest.tiny_config: the built-in default and conftest.TINY),
    # stopped after one epoch: XLA compiles nothing the session's cache does not already hold.
    cmd = [sys.executable, "-m", "asmnet_jax.cli.train", f"--workdir={workdir}",
           *tiny_flags(max_steps=4)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    assert summary["step"] == 4 and summary["val_nme"] > 0 and summary["wall_s"] > 0
    # asmnet-train restarts itself with glibc's huge-page tunable where that can work.
    from asmnet_jax import hugepages
    restarts = hugepages.thp_environment(os.environ, platform.system(), platform.libc_ver(),
                                         hugepages.thp_mode()) is not None
    assert ("glibc malloc uses transparent huge pages" in done.stderr) == restarts, \
        done.stderr[-3000:]
    # (An unknown key's usage error: test_cli.py, through the same main().)
    missing = subprocess.run(cmd + ["--config.init=imagenet",
                                    f"--config.init_path={tmp_path / 'nowhere.h5'}"],
                             capture_output=True, text=True, timeout=300)
    assert missing.returncode == 1 and "Traceback" not in missing.stderr, missing.stderr[-3000:]
    assert "asmnet-train: error: ImageNet MobileNetV2 weights not found" in missing.stderr


def test_mean_head_init_starts_at_the_mean_shape_and_pose():
    params = {"landmark_head": {"kernel": np.ones((4, 6), np.float32), "bias": np.zeros(6, np.float32)},
              "pose_head": {"kernel": np.ones((4, 3), np.float32), "bias": np.zeros(3, np.float32)},
              "backbone": {"kernel": np.ones(2)}}
    mean_shape, mean_pose = np.arange(6) / 10.0, np.array([0.1, -0.2, 0.3])
    out = train.mean_head_init(params, mean_shape, mean_pose, scale=0.1)
    np.testing.assert_allclose(out["landmark_head"]["bias"], mean_shape, rtol=1e-6)
    np.testing.assert_allclose(out["pose_head"]["bias"], mean_pose, rtol=1e-6)
    np.testing.assert_allclose(out["landmark_head"]["kernel"], 0.1)
    assert out["backbone"] is params["backbone"]


@pytest.mark.slow
def test_the_default_config_learns(tmp_path):
    """The README's main job: the validation NME ends far below the mean shape's."""
    from asmnet_jax.config_base import default_config

    c = default_config()
    c.progress_bar = False
    summary = train.train_and_evaluate(c, str(tmp_path))
    assert summary["val_nme"] < 0.5 * summary["val_nme_mean_shape"]


@pytest.mark.parametrize("name", ["default", "asmnet_300w", "asmnet_wflw", "mnv2_300w",
                                  "mnv2_wflw", "asmnet_300w_cpu", "mnv2_300w_cpu"])
def test_every_config_file_is_valid(name):
    import importlib.util
    import pathlib

    path = pathlib.Path(__file__).resolve().parents[1] / "configs" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config()
    config_base.check_config(config)
    assert config.model == ("mnv2" if name.startswith("mnv2") else "asmnet")
    assert config.asm_loss == (not name.startswith("mnv2"))


def _warm_start(source, workdir, caplog, num_landmarks):
    """Runs one step of tiny_config warm-started from ``source``; returns (state, saved source
    variables, a fresh state's params for the same run)."""
    import logging

    from asmnet_jax import inference

    saved = inference.load(source).variables  # the best checkpoint, which init_path takes
    caplog.set_level(logging.INFO, logger="asmnet_jax")
    # Seed 1: the source ran with seed 0, so a backbone near it can only come from the warm start.
    config = tiny_config(num_landmarks=num_landmarks, init="checkpoint", init_path=source,
                         max_steps=1, seed=1)
    train.train_and_evaluate(config, workdir)
    assert "warm start from" in caplog.text
    _, state = _params(workdir)
    # What the run would have started from without the warm start (the run's own programs).
    _, optimizer = train.schedule_and_optimizer(config.optimizer, 4, 12)
    fresh = train.steps_lib.create_train_state(
        build_model(config, bn_axis_name=mesh_lib.DATA_AXIS), optimizer,
        jax.random.key(1), 32)
    return state, saved, fresh.params


def test_a_run_warm_starts_from_another_runs_best_checkpoint(uninterrupted, tmp_path, caplog):
    """config.init='checkpoint' in asmnet-train's path: the backbone and heads start from the
    other run's best checkpoint (the same programs as the session's run: nothing compiles)."""
    state, saved, fresh = _warm_start(uninterrupted[0], str(tmp_path / "warm"), caplog, 68)
    # One Adam step of at most ~lr away from the source; a scratch start is far off.
    assert _max_difference(state["params"]["backbone"], saved["params"]["backbone"]) < 1e-2
    assert _max_difference(state["params"]["landmark_head"],
                           saved["params"]["landmark_head"]) < 1e-2
    assert _max_difference(fresh["backbone"], saved["params"]["backbone"]) > 0.1
    assert "new landmark_head" not in caplog.text


@pytest.mark.slow
def test_a_68_point_run_warm_starts_a_98_point_run(uninterrupted, tmp_path, caplog):
    """The same with a 98-point run: its landmark head starts anew (and the log says so). Slow
    (a 98-point model compiles its own programs); the default tier checks the 68 -> 98 weights
    in test_init.py and the run's warm-start path above."""
    state, saved, fresh = _warm_start(uninterrupted[0], str(tmp_path / "warm"), caplog, 98)
    assert "new landmark_head" in caplog.text
    assert _max_difference(state["params"]["backbone"], saved["params"]["backbone"]) < 1e-2
    assert state["params"]["landmark_head"]["kernel"].shape[-1] == 196
    assert _max_difference(fresh["backbone"], saved["params"]["backbone"]) > 0.1


def test_learning_rate_schedules():
    opt = base_config().optimizer
    opt.schedule = "authors_cyclic"
    opt.learning_rate, opt.cyclic_min_lr, opt.cyclic_half_cycle_epochs = 1e-2, 1e-7, 10.0
    opt.time_decay = 1e-5
    lr = train.learning_rate_schedule(opt, steps_per_epoch=5, total_steps=500)
    # Triangular between 1e-7 and 1e-2 with a half cycle of 50 steps, then Keras time decay.
    assert float(lr(0)) == pytest.approx(1e-7)
    assert float(lr(25)) == pytest.approx((1e-7 + 0.5 * (1e-2 - 1e-7)) / (1 + 1e-5 * 25), rel=1e-5)
    assert float(lr(50)) == pytest.approx(1e-2 / (1 + 1e-5 * 50), rel=1e-5)
    assert float(lr(100)) == pytest.approx(1e-7 / (1 + 1e-5 * 100), rel=1e-4)
    opt.schedule, opt.warmup_epochs = "cosine", 2.0
    lr = train.learning_rate_schedule(opt, steps_per_epoch=5, total_steps=500)
    assert float(lr(0)) == 0.0 and float(lr(10)) == pytest.approx(1e-2)
    assert float(lr(500)) == pytest.approx(0.0, abs=1e-9)


def test_the_loop_stops_the_device_only_to_log_evaluate_or_save():
    """7 steps per epoch (300W at batch 256), logs every 20 steps, evaluations and saves every 5
    epochs: an epoch end with nothing due fetches nothing."""
    config = base_config()
    config.log_every_steps, config.eval_every_epochs, config.checkpoint_every_epochs = 20, 5, 5
    due = {step: train.due(step, 7, 1050, config) for step in range(1, 1051)}
    assert due[7] == (False, False, False)          # an epoch end with nothing to do
    assert due[20] == (True, False, False)          # a log step
    assert due[35] == (True, True, True)            # the end of epoch 5
    assert due[1050] == (True, True, True)          # the last step
    assert sum(log for log, _, _ in due.values()) == 1050 // 20 + 1050 // 35 - 1050 // 140
    config.eval_every_epochs = 1                    # evaluating every epoch: a fetch per epoch
    assert train.due(7, 7, 1050, config) == (True, True, False)
    assert train.due(12, 7, 12, config) == (True, True, True)  # a last step inside an epoch


def test_the_best_checkpoint_survives_a_restart(tmp_path):
    """BestN must know the metrics of checkpoints saved before a restart, or it deletes the best."""
    state = {"w": np.ones(3, np.float32)}
    directory = str(tmp_path)
    ckpt = run_dir.Checkpoints(directory, keep=2)
    for step, nme in ((1, 5.0), (2, 1.0), (3, 4.0)):
        ckpt.save(state, {"step": step, "val_nme": nme}, nme)
    ckpt.close()
    ckpt = run_dir.Checkpoints(directory, keep=2)   # a resumed run
    for step, nme in ((4, 3.0), (5, 3.5)):
        ckpt.save(state, {"step": step, "val_nme": nme}, nme)
    ckpt.wait()   # saves are written in the background
    assert ckpt.steps() == [2, 4, 5]
    assert ckpt.best_step() == 2
    ckpt.close()
    assert run_dir.read_checkpoint(directory)[0] == 2   # what evaluation reads as "best"


def test_a_save_returns_while_its_files_are_still_being_written(tmp_path):
    """Checkpoints.save starts the write and returns (the loop goes on training); a synchronous
    save would return with nothing in progress. 64 MB take far longer to write than the check
    right after save() returns."""
    state = {"w": np.ones((4, 4096, 1024), np.float32)}
    ckpt = run_dir.Checkpoints(str(tmp_path), keep=2)
    ckpt.save(state, {"step": 1}, 1.0)
    in_progress = ckpt.manager.is_saving_in_progress()
    ckpt.wait()
    assert in_progress
    assert not ckpt.manager.is_saving_in_progress()
    restored, meta = ckpt.read()
    assert meta == {"step": 1} and np.array_equal(restored["w"], state["w"])
    ckpt.close()


def test_an_unknown_command_line_key_gets_one_line_before_flag_parsing():
    from asmnet_jax.cli import train as train_cli
    argv = ["asmnet-train", "--workdir", "w", "--config.optimizer.learning_rate=0.1"]
    assert train_cli.unknown_override(argv) is None
    assert train_cli.unknown_override(argv + ["--config.augment.flip_prob", "0"]) is None
    assert train_cli.unknown_override(argv + ["--config.learning_rate=0.1"]) == (
        "unknown config key config.learning_rate; did you mean config.optimizer.learning_rate?")


def test_the_built_in_default_is_configs_default():
    import importlib.util
    import pathlib

    from asmnet_jax import config_base

    path = pathlib.Path(__file__).resolve().parents[1] / "configs" / "default.py"
    spec = importlib.util.spec_from_file_location("default", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.get_config().to_dict() == config_base.get_config().to_dict()
    assert config_base.get_config().landmark_loss == "l1"  # not the schema's default


def test_equal_settings_reuse_the_compiled_programs():
    """A second run of the same model and settings in a process gets the same optimizer object
    and so the same jitted init and steps (nothing traced again); another setting gets new ones."""
    config = tiny_config()
    _, optimizer = train.schedule_and_optimizer(config.optimizer, 4, 12)
    assert train.schedule_and_optimizer(tiny_config().optimizer, 4, 12)[1] is optimizer
    assert train.schedule_and_optimizer(config.optimizer, 4, 16)[1] is not optimizer
    other = tiny_config(**{"optimizer.learning_rate": 5e-4}).optimizer
    assert train.schedule_and_optimizer(other, 4, 12)[1] is not optimizer
    mesh = mesh_lib.make_mesh()
    model = build_model(config, bn_axis_name=mesh_lib.DATA_AXIS)
    same_model = build_model(tiny_config(), bn_axis_name=mesh_lib.DATA_AXIS)
    settings = train.steps_lib.LossSettings(total_epochs=3, steps_per_epoch=4)
    step = train.steps_lib.compile_train_step(model, optimizer, settings, mesh)
    assert train.steps_lib.compile_train_step(same_model, optimizer, settings, mesh) is step
    assert train.steps_lib.compile_train_step(
        model, optimizer, settings.replace(ema_decay=0.5), mesh) is not step
    assert train.steps_lib.compile_eval_step(model, mesh) is \
        train.steps_lib.compile_eval_step(same_model, mesh)
    assert train.steps_lib.compile_eval_step(model, mesh, flip=True) is not \
        train.steps_lib.compile_eval_step(model, mesh)
