"""Training: ``prepare(config, workdir) -> Run``, then ``fit(run) -> summary``.

:func:`prepare` builds everything a run needs and nothing trains yet: it checks the config,
opens the data (:mod:`asmnet_jax.data.sources`), fits the ASM on the training shapes, builds the
model, the optimizer and the train state (fresh, from starting weights, or restored from the
workdir's latest good checkpoint), the training input (:mod:`asmnet_jax.data.inputs`: on the
device or on the host), the distillation teacher if the config names one, and the validation set
(:mod:`asmnet_jax.evaluation`). :func:`fit` is the loop: for each step it hands the input's next
batch to the compiled data-parallel step (:mod:`asmnet_jax.steps`), logs every
``log_every_steps``, evaluates and checkpoints at epoch ends (:mod:`asmnet_jax.run_dir`), and
stops with a clear message on a non-finite loss. A restarted run resumes with step, parameters,
optimizer state, RNG and data position, and continues exactly as if it had never stopped. The
benchmarks in ``experiments/`` time what :func:`prepare` builds, so they time what
``asmnet-train`` runs.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import math
import os
import time
from typing import Any, Callable, Dict, Optional, Tuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import orbax.checkpoint as ocp

from asmnet_jax import config_changes
from asmnet_jax import inference
from asmnet_jax import init as init_lib
from asmnet_jax import metrics
from asmnet_jax import run_dir
from asmnet_jax import steps as steps_lib
from asmnet_jax.asm import ShapeModel
from asmnet_jax.config_base import ConfigError, check_config
from asmnet_jax.data import crop, inputs, sources
from asmnet_jax.depthwise import resolve_impl
from asmnet_jax.errors import AsmnetError, ModelError
from asmnet_jax.evaluation import EvalSet
from asmnet_jax.mesh import DATA_AXIS, host_copy, make_mesh, replicate
from asmnet_jax.models import DTYPES, build_model

log = logging.getLogger(__name__)


class TrainingDiverged(AsmnetError, RuntimeError):
    """The loss became NaN or infinite."""


# ----------------------------------------------------------------------------------------------
# Optimisation


def learning_rate_schedule(opt, steps_per_epoch: int, total_steps: int):
    """The learning rate as a function of the step (see ``config.optimizer``)."""
    if opt.schedule == "constant":
        return optax.constant_schedule(opt.learning_rate)
    if opt.schedule == "cosine":
        warmup = int(round(opt.warmup_epochs * steps_per_epoch))
        return optax.warmup_cosine_decay_schedule(
            0.0, opt.learning_rate, max(warmup, 1), max(total_steps, warmup + 1))
    half = max(1.0, opt.cyclic_half_cycle_epochs * steps_per_epoch)
    low, high, decay = opt.cyclic_min_lr, opt.learning_rate, opt.time_decay

    def authors_cyclic(step):
        # Triangular cycle starting at the low end, then Keras' time decay.
        position = jnp.mod(step / half, 2.0)
        triangle = 1.0 - jnp.abs(position - 1.0)
        return (low + (high - low) * triangle) / (1.0 + decay * step)

    return authors_cyclic


def make_optimizer(opt, schedule) -> optax.GradientTransformation:
    parts = []
    if opt.grad_clip > 0:
        parts.append(optax.clip_by_global_norm(opt.grad_clip))
    if opt.name == "adamw":
        parts.append(optax.adamw(schedule, b1=opt.b1, b2=opt.b2, weight_decay=opt.weight_decay))
    elif opt.name == "sgd":
        parts.append(optax.sgd(schedule, momentum=opt.b1 or None))
    else:
        parts.append(optax.adam(schedule, b1=opt.b1, b2=opt.b2))
    return optax.chain(*parts)


def schedule_and_optimizer(opt, steps_per_epoch: int, total_steps: int):
    """(:func:`learning_rate_schedule`, :func:`make_optimizer`) for ``config.optimizer``, the same
    objects for the same settings within a process, so that the steps compiled for them are
    reused (:func:`asmnet_jax.steps.compile_train_step` keeps them per optimizer object)."""
    return _schedule_and_optimizer(opt.to_json(sort_keys=True), int(steps_per_epoch),
                                   int(total_steps))


@functools.lru_cache(maxsize=8)
def _schedule_and_optimizer(opt_json: str, steps_per_epoch: int, total_steps: int):
    opt = ml_collections.ConfigDict(json.loads(opt_json))  # scalars only: an exact round trip
    schedule = learning_rate_schedule(opt, steps_per_epoch, total_steps)
    return schedule, make_optimizer(opt, schedule)



# ----------------------------------------------------------------------------------------------
# Starting weights


def initial_weights(config, model, state, train_input) -> Tuple[Dict, bool]:
    """The starting variables of a fresh run with ``config.init`` != "scratch", and whether its
    heads are new (so that ``head_init`` applies). Logs what it did."""
    variables = jax.device_get({"params": state.params, "batch_stats": state.batch_stats})
    if config.init == "checkpoint":
        variables, summary = init_lib.load_checkpoint_weights(
            config.init_path, config.model, config.num_landmarks, config.input_range, variables)
        log.info("warm start from %s (step %s): %d arrays copied%s", summary["source"],
                 summary["step"], summary["copied"],
                 f"; new {', '.join(summary['new_heads'])}" if summary["new_heads"] else "")
        return variables, bool(summary["new_heads"])
    path = init_lib.find_imagenet_weights(config.init_path)
    variables, summary = init_lib.load_imagenet_backbone(path, variables)
    log.info("backbone from ImageNet weights %s (%d values%s)", path, summary["backbone_values"],
             "; its BNs are folded into the convolutions" if summary["folded_batch_norm"] else "")
    if config.init_bn_images > 0:
        images = train_input.bn_images(min(config.init_bn_images, len(train_input)),
                                       min(config.batch_size, 64))
        variables, bn = init_lib.reestimate_batch_norm(model, variables, images)
        log.info("BN re-estimation: %d BatchNorms rewritten from the statistics of %d augmented "
                 "training crops (same function; scales x%.3g median, x%.3g..x%.3g)",
                 bn["layers"], bn["images"], bn["scale_factor_median"], bn["scale_factor_min"],
                 bn["scale_factor_max"])
    return variables, True


def mean_head_init(params, mean_landmarks, mean_pose, scale: float = 0.1):
    """Heads that start at the training set's mean landmarks (2n,) and pose (3,) in model units,
    with kernels scaled by ``scale``."""
    params = dict(params)
    for name, bias in (("landmark_head", mean_landmarks), ("pose_head", mean_pose)):
        head = dict(params[name])
        head["kernel"] = head["kernel"] * scale
        head["bias"] = jnp.asarray(bias, head["bias"].dtype)
        params[name] = head
    return params


# ----------------------------------------------------------------------------------------------
# Distillation


def check_teacher_path(path: str) -> str:
    """``config.distill_teacher`` as an absolute path (a workdir, a checkpoint, a model directory
    or a shipped model's name); raises :class:`ConfigError` naming it if there is none."""
    try:
        return inference.resolve_model_path(path)
    except FileNotFoundError as error:
        raise ConfigError(f"config.distill_teacher: {error}") from None


def load_teacher(config) -> Tuple[steps_lib.Teacher, Dict]:
    """The teacher of ``config.distill_teacher`` (its best checkpoint for a workdir) as
    (:class:`asmnet_jax.steps.Teacher`, variables on the host), built in the run's compute dtype
    and depthwise form. Raises :class:`ConfigError` naming the key when it does not load or does
    not predict ``config.num_landmarks`` points."""
    path = check_teacher_path(config.distill_teacher)
    dtype = DTYPES[config.dtype]
    try:
        loaded = inference.load(path, dtype=dtype,
                                depthwise_impl=resolve_impl(config.depthwise_impl, dtype))
    except ModelError as error:
        raise ConfigError(f"config.distill_teacher: {error}") from None
    if loaded.num_landmarks != config.num_landmarks:
        raise ConfigError(f"config.distill_teacher: {loaded.path} predicts "
                          f"{loaded.num_landmarks} landmarks, but this run trains "
                          f"{config.num_landmarks} (config.num_landmarks)")
    if not math.isclose(loaded.margin, config.margin):
        log.warning("distillation teacher %s was trained with margin %g, this run crops with %g: "
                    "it sees faces at another scale than it was trained on", loaded.path,
                    loaded.margin, config.margin)
    log.info("distillation: teacher %s (%s, %d px%s), weight %g", loaded.path,
             loaded.model_name, loaded.input_size,
             "" if loaded.input_size == config.input_size else
             f"; the {config.input_size} px crops are resized to it on the device",
             config.distill_weight)
    return steps_lib.Teacher(loaded.model, loaded.input_size), loaded.variables


# ----------------------------------------------------------------------------------------------
# Setup


@dataclasses.dataclass
class Run:
    """Everything :func:`fit` needs, built by :func:`prepare`. ``state``, ``shape_model`` and
    ``teacher_variables`` are replicated on ``mesh``; ``train_step`` is compiled for ``input``
    (and ``teacher``): ``train_step(state, batch, shape_model, teacher_variables)``."""

    config: ml_collections.ConfigDict
    workdir: str
    mesh: Any
    model: Any
    optimizer: optax.GradientTransformation
    settings: steps_lib.LossSettings
    schedule: Callable
    state: steps_lib.TrainState
    shape_model: Optional[ShapeModel]
    input: Any                       # inputs.DeviceInput or inputs.HostInput
    train_step: Callable
    validation: EvalSet
    checkpoints: run_dir.Checkpoints
    steps_per_epoch: int
    total_steps: int
    last_step: int
    best_nme: float                  # the best validation NME so far (inf before any)
    mean_shape_nme: float            # the validation NME of the mean training shape (%)
    wall_start: float
    teacher: Optional[steps_lib.Teacher] = None   # distillation (config.distill_teacher)
    teacher_variables: Any = None                 # its variables, replicated; None without

    @property
    def start_step(self) -> int:
        return int(self.state.step)


def _check_start(config, workdir: str) -> str:
    """Fails on what can be checked before anything is read or compiled; returns ``workdir``
    absolute."""
    check_config(config)
    if config.init == "imagenet":
        init_lib.find_imagenet_weights(config.init_path)
    elif config.init == "checkpoint":
        init_lib.check_checkpoint_path(config.init_path)
    if config.distill_teacher:
        check_teacher_path(config.distill_teacher)
    workdir = os.path.abspath(workdir)
    if os.path.exists(workdir) and not os.path.isdir(workdir):
        raise ConfigError(f"--workdir {workdir}: is a file, not a directory")
    return workdir


def _check_resume(config, workdir: str) -> None:
    """A run resumed in ``workdir`` must train what it trained: changes to the model, the data or
    the loss are refused in one line; changes that extend or observe it are logged."""
    if not os.path.isdir(os.path.join(workdir, run_dir.CHECKPOINTS)) or \
            not run_dir.is_run(workdir):
        return
    saved = run_dir.read_config(workdir, required=())
    refused, allowed = config_changes.compare_for_resume(saved, config)
    if refused:
        raise ConfigError(config_changes.resume_error_message(
            refused, os.path.join(workdir, run_dir.CONFIG_JSON)))
    if allowed:
        log.info(config_changes.resume_log_message(allowed))


def _initial_state(config, model, optimizer, train_input, shapes, poses, checkpoints):
    """The train state of a fresh run (starting weights, mean heads, optimizer, weight average),
    replaced by the newest good checkpoint's when there is one; and that checkpoint's meta."""
    state = steps_lib.create_train_state(model, optimizer, jax.random.key(config.seed),
                                         config.input_size)
    new_heads = True
    if checkpoints.latest_step() is None and config.init != "scratch":
        variables, new_heads = initial_weights(config, model, state, train_input)
        state = state.replace(params=variables["params"], batch_stats=variables["batch_stats"])
    if config.head_init == "mean" and new_heads:
        state = state.replace(params=mean_head_init(state.params, shapes.mean(axis=0),
                                                    poses.mean(axis=0)))
    state = state.replace(opt_state=optimizer.init(state.params))
    if config.ema_decay > 0:
        state = steps_lib.with_ema(state)
    restored, meta = checkpoints.restore_latest(jax.tree_util.tree_map(
        ocp.utils.to_shape_dtype_struct, state))
    if restored is None:
        return state, {}
    log.info("resumed from step %d", int(restored.step))
    return restored, meta


def prepare(config: ml_collections.ConfigDict, workdir: str) -> Run:
    """Builds the run ``config`` describes in ``workdir`` (resuming what is there)."""
    wall_start = time.perf_counter()
    workdir = _check_start(config, workdir)
    _check_resume(config, workdir)
    teacher, teacher_variables = load_teacher(config) if config.distill_teacher else (None, None)
    os.makedirs(workdir, exist_ok=True)
    is_main = jax.process_index() == 0
    if is_main:
        run_dir.write_config(workdir, config)

    train_source = sources.open_split(config, config.train_split, in_memory=True)
    val_arrays = sources.host_arrays(sources.open_split(config, config.val_split, in_memory=True),
                                     config.num_landmarks, "the validation split")
    steps_per_epoch = len(train_source) // config.batch_size
    if steps_per_epoch == 0:
        raise ConfigError(f"config.batch_size: {config.batch_size} is larger than the "
                          f"{len(train_source)} training examples")
    total_steps = steps_per_epoch * config.num_epochs
    mesh = make_mesh()
    train_input = inputs.make_input(config, train_source, mesh, steps_per_epoch)
    shapes, poses = crop.base_labels(train_input.source, config.margin, config.input_size)
    shape_model = None
    if config.asm_loss:
        shape_model = ShapeModel.fit(shapes, config.asm_variance)
        if is_main:
            shape_model.save(run_dir.shape_model_path(workdir))
        log.info("ASM: %d components keep %.0f%% of the shape variance",
                 shape_model.num_components, 100 * config.asm_variance)

    model = build_model(config, bn_axis_name=DATA_AXIS)
    schedule, optimizer = schedule_and_optimizer(config.optimizer, steps_per_epoch, total_steps)
    settings = steps_lib.LossSettings(
        total_epochs=config.num_epochs, steps_per_epoch=steps_per_epoch,
        head_l2_weight=config.head_l2, landmark_loss=config.landmark_loss,
        wing=(float(config.wing_width), float(config.wing_epsilon)),
        ema_decay=config.ema_decay,
        # Read only with a teacher: without one the settings (a compile key) stay the default's.
        distill_weight=float(config.distill_weight) if teacher is not None else 1.0)
    checkpoints = run_dir.Checkpoints(workdir, config.keep_checkpoints)
    state, meta = _initial_state(config, model, optimizer, train_input, shapes, poses,
                                 checkpoints)
    validation = EvalSet(val_arrays, model, mesh, config.input_size, config.margin,
                         config.batch_size)
    # The mean training shape's validation NME: the bar a model that learned nothing would reach.
    mean_shape_nme = 100 * float(np.mean(metrics.per_face_nme(
        np.broadcast_to(shapes.mean(axis=0), validation.gt_landmarks.shape),
        validation.gt_landmarks)))
    return Run(config=config, workdir=workdir, mesh=mesh, model=model, optimizer=optimizer,
               settings=settings, schedule=schedule,
               state=replicate(state, mesh),
               shape_model=replicate(shape_model, mesh) if shape_model is not None else None,
               input=train_input,
               train_step=train_input.compile_step(model, optimizer, settings, teacher),
               validation=validation, checkpoints=checkpoints, steps_per_epoch=steps_per_epoch,
               total_steps=total_steps,
               last_step=total_steps if config.max_steps <= 0 else min(total_steps,
                                                                       config.max_steps),
               best_nme=meta.get("best_val_nme", math.inf), mean_shape_nme=mean_shape_nme,
               wall_start=wall_start, teacher=teacher,
               teacher_variables=None if teacher is None else replicate(teacher_variables, mesh))


# ----------------------------------------------------------------------------------------------
# The loop


def due(step: int, steps_per_epoch: int, last_step: int, config) -> Tuple[bool, bool, bool]:
    """(log, evaluate, save) after ``step`` steps: evaluations and saves at the ends of every
    ``eval_every_epochs``-th and ``checkpoint_every_epochs``-th epoch and after the last step;
    metrics are fetched every ``log_every_steps`` steps and wherever an evaluation or save is due,
    but not at an epoch end with nothing to do (on a GPU a 300W epoch is a few steps, and each
    fetch stops the device)."""
    last = step == last_step
    epoch, within = divmod(step, steps_per_epoch)
    end_of_epoch = within == 0
    evaluate = last or (end_of_epoch and epoch % config.eval_every_epochs == 0)
    save = last or (end_of_epoch and epoch % config.checkpoint_every_epochs == 0)
    return step % config.log_every_steps == 0 or evaluate or save, evaluate, save


def _fmt(value: float) -> str:
    return f"{value:.4g}"


def _check_finite(values: Dict[str, float], step: int, run: Run) -> None:
    if math.isfinite(values["total"]) and math.isfinite(values["grad_norm"]):
        return
    raise TrainingDiverged(
        f"the loss became {values['total']} (gradient norm {values['grad_norm']}; found at step "
        f"{step}, epoch {(step - 1) // run.steps_per_epoch}, checking every "
        f"{run.config.log_every_steps} steps); stopping. The last good checkpoint in "
        f"{run.checkpoints.directory} is untouched: lower config.optimizer.learning_rate or set "
        "config.optimizer.grad_clip and resume.")


def _log_train(run: Run, logger: run_dir.MetricsLog, step: int, step_metrics,
               window_steps: int, elapsed: float) -> None:
    """Fetches the step's metrics (this waits for the step), checks them and logs them."""
    values = {key: float(value) for key, value in host_copy(step_metrics).items()}
    values.setdefault("distill", 0.0)  # the step computes the term only with a teacher
    _check_finite(values, step, run)
    values["learning_rate"] = float(run.schedule(step - 1))
    values["img_per_s"] = window_steps * run.config.batch_size / max(elapsed, 1e-9)
    logger.scalars(step, values, "train")
    logger.progress(window_steps, {
        "ep": str(int(values["epoch"])), "loss": _fmt(values["total"]),
        "mse": _fmt(values["mse"]), "asm": _fmt(values["asm"]), "alpha": _fmt(values["alpha"]),
        "lr": _fmt(values["learning_rate"]), "img/s": f"{values['img_per_s']:.0f}"})


def _evaluate_and_save(run: Run, logger: run_dir.MetricsLog, step: int, evaluate: bool,
                       save: bool) -> Dict:
    """The validation figures (when ``evaluate``) and a checkpoint (when ``save``) after
    ``step``; returns the validation summary ({} when not evaluated)."""
    val_summary: Dict = {}
    seconds = {}
    epoch = step // run.steps_per_epoch
    if evaluate:
        start = time.perf_counter()
        val_summary = run.validation.metrics(steps_lib.eval_variables(run.state))
        seconds["eval_s"] = time.perf_counter() - start
        run.best_nme = min(run.best_nme, val_summary["nme"])
        logger.scalars(step, {k: v for k, v in val_summary.items()
                              if isinstance(v, (int, float))}, "val")
        logger.write(f"step {step} epoch {epoch}: val NME {val_summary['nme']:.3f}% "
                     f"(best {run.best_nme:.3f}%), FR {val_summary['fr']:.1f}%")
    if save:
        start = time.perf_counter()
        val_nme = val_summary.get("nme")
        run.checkpoints.save(host_copy(run.state), {"step": step, "epoch": epoch,
                                                    "val_nme": val_nme,
                                                    "best_val_nme": run.best_nme}, val_nme)
        seconds["save_s"] = time.perf_counter() - start  # the wait; the write goes on
    logger.scalars(step, seconds, "time")  # where the time between training windows goes
    return val_summary


def fit(run: Run) -> Dict:
    """Trains ``run`` to its last step; returns the final summary (also written to
    ``workdir/metrics.json``)."""
    config = run.config
    is_main = jax.process_index() == 0
    logger = run_dir.MetricsLog(run.workdir, run.last_step, run.start_step, is_main,
                                config.progress_bar)
    logger.write(f"{config.model} on {config.dataset}: {len(run.input)} training faces, "
                 f"{run.steps_per_epoch} steps per epoch, {run.total_steps} steps, "
                 f"{jax.device_count()} device(s) in {jax.process_count()} process(es), input "
                 f"on the {run.input.kind}; the mean shape's validation NME is "
                 f"{run.mean_shape_nme:.2f}%")
    val_summary: Dict = {}
    step = run.start_step
    batches = run.input.batches(step)
    window_start, window_steps = time.perf_counter(), 0
    try:
        while step < run.last_step:
            run.state, step_metrics = run.train_step(run.state, next(batches), run.shape_model,
                                                     run.teacher_variables)
            step += 1
            window_steps += 1
            log_now, evaluate, save = due(step, run.steps_per_epoch, run.last_step, config)
            if log_now:  # the only place metrics reach the host: steps between stay async
                _log_train(run, logger, step, step_metrics, window_steps,
                           time.perf_counter() - window_start)
                window_start, window_steps = time.perf_counter(), 0
            if evaluate or save:
                val_summary = _evaluate_and_save(run, logger, step, evaluate, save) or val_summary
    finally:
        logger.close()
        run.checkpoints.close()
    return _finish(run, step, val_summary)


def _finish(run: Run, step: int, val_summary: Dict) -> Dict:
    """The run's summary (with the flip-averaged validation after the last step, if asked),
    written to ``metrics.json``."""
    flip: Dict = {}
    is_main = jax.process_index() == 0
    if run.config.final_flip_eval and step == run.last_step:
        flip = run.validation.metrics(steps_lib.eval_variables(run.state), flip=True)
        if is_main:
            print(f"val NME with flip averaging {flip['nme']:.3f}%, FR {flip['fr']:.1f}%",
                  flush=True)
    config = run.config
    summary = {"step": step, "epoch": step / run.steps_per_epoch,
               "val_nme": val_summary.get("nme"), "val_fr": val_summary.get("fr"),
               "val_auc": val_summary.get("auc"),
               "best_val_nme": run.best_nme if math.isfinite(run.best_nme) else None,
               "val_nme_mean_shape": run.mean_shape_nme,
               "val_pose_mae": val_summary.get("pose_mae"),
               "val_nme_flip": flip.get("nme"), "val_fr_flip": flip.get("fr"),
               "val_auc_flip": flip.get("auc"),
               "model": config.model, "dataset": config.dataset, "asm_loss": config.asm_loss,
               "input": run.input.kind, "devices": jax.device_count(),
               "processes": jax.process_count(), "wall_s": time.perf_counter() - run.wall_start}
    if is_main:
        run_dir.write_summary(run.workdir, summary)
    return summary


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> Dict:
    """Trains (or resumes) the run in ``workdir``: :func:`fit` of :func:`prepare`."""
    return fit(prepare(config, workdir))
