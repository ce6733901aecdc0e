"""The train state, the optimizer, and the data-parallel train and eval steps.

The steps are per-device functions written with pmap semantics: each device sees its shard of the
global batch, gradients, loss terms and BN statistics are averaged with ``lax.pmean`` over the
``data`` mesh axis (BN normalises with cross-device statistics, ``bn_axis_name='data'``), and the
update is applied identically everywhere. :func:`compile_train_step` compiles them once with
``jax.jit`` over ``jax.shard_map`` on a 1-D ``data`` mesh, so the same code runs on one CPU, N GPUs
or TPU cores, and several hosts.

The ASM projection and the alpha schedule run inside the step: the shape model is an argument (a
pytree of device arrays) and the epoch is computed from the traced step counter, so nothing goes
back to the host and nothing recompiles from one epoch to the next.

With distillation (:class:`Teacher`), a trained teacher model runs in inference mode inside the
same step on the images the student trains on; its variables are an argument like the shape
model, its module and input size are static (part of what the step is compiled for).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, Dict, Optional, Tuple

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax import lax
from jax.sharding import PartitionSpec as P

from asmnet_jax.asm import ShapeModel
from asmnet_jax.landmarks import FLIP_ORDERS
from asmnet_jax.losses import WING, asm_alpha, total_loss
from asmnet_jax.mesh import DATA_AXIS
#: Compiled programs (init, train step, eval step) kept per process: runs that repeat a model and
#: its settings in one process (sweeps, notebooks, tests) reuse them instead of tracing anew.
_PROGRAMS_KEPT = 8


@flax.struct.dataclass
class TrainState:
    """Everything a resumed run needs: step, params, BN statistics, optimizer state and RNG key.

    ``rng`` holds raw key data (uint32) so that checkpoints store it as a plain array.
    """

    step: jax.Array
    params: Any
    batch_stats: Any
    opt_state: Any
    rng: jax.Array
    # {'params', 'batch_stats'}: their exponential moving average when config.ema_decay > 0 (what
    # is evaluated and saved as the model), else None.
    ema: Any = None


@flax.struct.dataclass
class LossSettings:
    """Static settings of the train step: the loss (see :func:`asmnet_jax.losses.total_loss`) and
    the weight average's decay (:func:`ema_update`)."""

    total_epochs: int = flax.struct.field(pytree_node=False, default=1)
    steps_per_epoch: int = flax.struct.field(pytree_node=False, default=1)
    head_l2_weight: float = flax.struct.field(pytree_node=False, default=0.0)
    pose_weight: float = flax.struct.field(pytree_node=False, default=0.5)
    landmark_loss: str = flax.struct.field(pytree_node=False, default="l2")
    wing: Tuple[float, float] = flax.struct.field(pytree_node=False, default=WING)
    ema_decay: float = flax.struct.field(pytree_node=False, default=0.0)
    # Weight of the distillation term (used only when the step has a Teacher).
    distill_weight: float = flax.struct.field(pytree_node=False, default=1.0)


@dataclasses.dataclass(frozen=True)
class Teacher:
    """The static half of a distillation teacher (``config.distill_teacher``): its Flax module
    and the input size it was trained at; its variables are the step's ``teacher_variables``
    argument. Hashable, so that equal teachers share compiled steps."""

    model: Any
    input_size: int


def images_to_unit(images, dtype=jnp.float32):
    """uint8 RGB images (from the pipeline) -> [0, 1] in ``dtype``; float images pass through."""
    if images.dtype == jnp.uint8:
        return images.astype(dtype) * jnp.asarray(1.0 / 255.0, dtype)
    return images.astype(dtype)


def create_train_state(model, optimizer: optax.GradientTransformation, rng: jax.Array,
                       input_size: int) -> TrainState:
    """Initialises params and BN statistics (on the host's default device) and the optimizer.

    One compiled function (run eagerly, the optimizer's and the key's small ops would each compile
    on their own, tens of them), kept for the process like the steps below.
    """
    return _init_program(model, optimizer, int(input_size))(rng)


@functools.lru_cache(maxsize=_PROGRAMS_KEPT)
def _init_program(model, optimizer, input_size: int) -> Callable:
    def init(rng):
        init_rng, state_rng = jax.random.split(rng)
        images = jnp.zeros((1, input_size, input_size, 3), jnp.float32)
        variables = model.init(init_rng, images)
        params = variables["params"]
        return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                          batch_stats=variables.get("batch_stats", {}),
                          opt_state=optimizer.init(params), rng=jax.random.key_data(state_rng))

    return jax.jit(init)


def with_ema(state: TrainState) -> TrainState:
    """``state`` whose weight average starts at its current params and BN statistics (copies)."""
    copy = lambda x: jnp.array(x, copy=True)  # noqa: E731 - own buffers: the state is donated
    return state.replace(ema={"params": jax.tree_util.tree_map(copy, state.params),
                              "batch_stats": jax.tree_util.tree_map(copy, state.batch_stats)})


def ema_update(ema, current, step, decay: float):
    """One update of the moving average ``ema`` towards ``current`` after 0-based ``step``.

    The decay used is ``min(decay, (1 + step) / (10 + step))``: early on, when the weights move
    fastest, the average follows them closely instead of remembering the initialisation.
    """
    step = jnp.asarray(step, jnp.float32)
    rate = 1.0 - jnp.minimum(decay, (1.0 + step) / (10.0 + step))
    return jax.tree_util.tree_map(lambda e, x: e + rate.astype(e.dtype) * (x - e), ema, current)


def eval_variables(state: TrainState) -> Dict[str, Any]:
    """What a run evaluates and saves as its model: the weight average when it keeps one."""
    if state.ema is not None:
        return state.ema
    return {"params": state.params, "batch_stats": state.batch_stats}


def epoch_of(step, steps_per_epoch: int):
    """0-based epoch of a (traced) step."""
    return step // steps_per_epoch


def teacher_predictions(teacher: Teacher, teacher_variables, images):
    """The teacher's (landmarks, pose) on ``images`` ([0, 1], (B, S, S, 3)), in inference mode and
    without gradient. Images of another size than the teacher's input are resized to it
    (bilinear, ``jax.image.resize``) on the device: the teacher then sees the student's crop
    resampled (upsampled, for a small student), not a crop made at its own resolution, so a
    teacher trained at the student's input size is preferable."""
    size = int(teacher.input_size)
    if images.shape[1:3] != (size, size):
        images = jax.image.resize(images, (images.shape[0], size, size, images.shape[3]),
                                  "bilinear")
    landmarks, pose = teacher.model.apply(teacher_variables, images, train=False)
    return (lax.stop_gradient(landmarks.astype(jnp.float32)),
            lax.stop_gradient(pose.astype(jnp.float32)))


def train_step(state: TrainState, inputs, shape_model: Optional[ShapeModel],
               teacher_variables=None, *, model, optimizer: optax.GradientTransformation,
               settings: LossSettings, make_batch: Optional[Callable] = None,
               teacher: Optional[Teacher] = None) -> Tuple[TrainState, Dict[str, jax.Array]]:
    """One step on this device's part of the data (call under shard_map over ``data``).

    ``inputs`` is this device's shard of the batch ({'image', 'landmarks', 'pose', 'mask'}), or,
    with ``make_batch``, whatever ``make_batch(inputs, step, key)`` cuts this device's batch from
    inside the step (a resident data set: :class:`asmnet_jax.data.resident.ResidentSpec`), from
    the state's step and key.

    With a ``teacher`` (distillation), ``teacher_variables`` are its variables and the teacher's
    predictions on the batch's (augmented) images add ``settings.distill_weight *``
    :func:`asmnet_jax.losses.distillation_loss` to the loss (term ``distill``); without one,
    ``teacher_variables`` must be None and the step is the plain one.
    """
    if (teacher is None) != (teacher_variables is None):
        raise ValueError("teacher_variables must be given exactly when the step was compiled "
                         "with a teacher")
    batch = inputs if make_batch is None else make_batch(
        inputs, state.step, jax.random.wrap_key_data(state.rng))
    step_key = jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step)
    dropout_key = jax.random.fold_in(step_key, lax.axis_index(DATA_AXIS))
    epoch = epoch_of(state.step, settings.steps_per_epoch)
    alpha = asm_alpha(epoch, settings.total_epochs)
    mask = batch["mask"]
    targets = None if teacher is None else teacher_predictions(
        teacher, teacher_variables, images_to_unit(batch["image"]))

    def loss_fn(params):
        (landmarks, pose), updates = model.apply(
            {"params": params, "batch_stats": state.batch_stats}, images_to_unit(batch["image"]),
            train=True,
            rngs={"dropout": dropout_key}, mutable=["batch_stats"])
        loss, terms = total_loss(landmarks, pose, batch["landmarks"], batch["pose"],
                                 shape_model=shape_model, alpha=alpha, params=params,
                                 head_l2_weight=settings.head_l2_weight,
                                 pose_weight=settings.pose_weight,
                                 landmark_loss=settings.landmark_loss, wing=settings.wing,
                                 teacher=targets, distill_weight=settings.distill_weight)
        return loss, (terms, updates["batch_stats"])

    (_, (terms, batch_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    grads = lax.pmean(grads, DATA_AXIS)
    terms = lax.pmean(terms, DATA_AXIS)
    # Statistics are already global (BN syncs over 'data'); pmean keeps them exactly replicated.
    batch_stats = lax.pmean(batch_stats, DATA_AXIS)
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics = dict(terms, epoch=epoch.astype(jnp.float32), grad_norm=optax.global_norm(grads),
                   examples=lax.psum(jnp.sum(mask), DATA_AXIS))
    new_state = state.replace(step=state.step + 1, params=params, batch_stats=batch_stats,
                              opt_state=opt_state)
    if state.ema is not None:
        new_state = new_state.replace(ema=ema_update(
            state.ema, {"params": params, "batch_stats": batch_stats}, state.step,
            settings.ema_decay))
    return new_state, metrics


def mirror_predictions(landmarks, pose, flip_order):
    """Predictions made on horizontally mirrored images -> predictions for the originals.

    ``landmarks`` (B, 2n) in model units (x -> -x, then point i takes the value of point
    ``flip_order[i]``, the markup's mirror order); ``pose`` (B, 3) yaw, pitch, roll (yaw and roll
    change sign). The same rule as :func:`asmnet_jax.landmarks.flip_landmarks_model`, in jnp.
    """
    order = jnp.asarray(np.asarray(flip_order, np.int32))
    points = landmarks.reshape(landmarks.shape[0], -1, 2) * jnp.asarray([-1.0, 1.0],
                                                                        landmarks.dtype)
    landmarks = points[:, order, :].reshape(landmarks.shape)
    return landmarks, pose * jnp.asarray([-1.0, 1.0, -1.0], pose.dtype)


def eval_step(variables, batch: Dict[str, jax.Array], *, model,
              flip_order=None) -> Dict[str, jax.Array]:
    """Predictions for this device's shard: {'landmarks' (b, 2n), 'pose' (b, 3)}.

    With ``flip_order`` (the markup's mirror order) the prediction is the average of the model on
    the images and, mirrored back (:func:`mirror_predictions`), on the images flipped left to
    right: ``(P(x) + M(P(flip(x)))) / 2``. Both halves go through the network as one batch.
    """
    images = images_to_unit(batch["image"])
    if flip_order is None:
        landmarks, pose = model.apply(variables, images, train=False)
        return {"landmarks": landmarks, "pose": pose}
    count = images.shape[0]
    landmarks, pose = model.apply(variables, jnp.concatenate([images, images[:, :, ::-1]]),
                                  train=False)
    mirrored, mirrored_pose = mirror_predictions(landmarks[count:], pose[count:], flip_order)
    return {"landmarks": (landmarks[:count] + mirrored) / 2,
            "pose": (pose[:count] + mirrored_pose) / 2}


def compile_train_step(model, optimizer, settings: LossSettings, mesh,
                       make_batch: Optional[Callable] = None,
                       teacher: Optional[Teacher] = None) -> Callable:
    """``step(state, inputs, shape_model, teacher_variables) -> (state, metrics)``: jit over
    shard_map on ``mesh``.

    ``model`` must be built with ``bn_axis_name='data'``. State, shape model (None without the ASM
    loss) and teacher variables (None without a ``teacher``) are replicated, ``inputs`` (a batch,
    or the data ``make_batch`` cuts batches from: :func:`train_step`) is split along its first
    axis; the state's buffers are donated. A None argument is an empty pytree: a step without a
    teacher is the same program as before distillation existed. The same arguments (equal model,
    settings, mesh, batch function and teacher, the same optimizer object) give the same
    function, so a second run in the process neither traces nor compiles again.
    """
    # One cache key however the defaults are passed (positionally, by name, or left out).
    return _train_program(model, optimizer, settings, mesh, make_batch, teacher)


@functools.lru_cache(maxsize=_PROGRAMS_KEPT)
def _train_program(model, optimizer, settings, mesh, make_batch, teacher) -> Callable:
    per_device = functools.partial(train_step, model=model, optimizer=optimizer,
                                   settings=settings, make_batch=make_batch, teacher=teacher)
    sharded = jax.shard_map(per_device, mesh=mesh, in_specs=(P(), P(DATA_AXIS), P(), P()),
                            out_specs=(P(), P()), check_vma=False)
    return jax.jit(sharded, donate_argnums=(0,))


@functools.lru_cache(maxsize=_PROGRAMS_KEPT)
def compile_eval_step(model, mesh, flip: bool = False) -> Callable:
    """``predict(variables, batch) -> {'landmarks', 'pose'}``, sharded along the batch; ``flip``
    averages with the prediction on mirrored images (:func:`eval_step`). Kept for the process
    per (model, mesh, flip), like :func:`compile_train_step`."""
    flip_order = tuple(int(i) for i in FLIP_ORDERS[model.num_landmarks]) if flip else None
    sharded = jax.shard_map(functools.partial(eval_step, model=model, flip_order=flip_order),
                            mesh=mesh, in_specs=(P(), P(DATA_AXIS)), out_specs=P(DATA_AXIS))
    return jax.jit(sharded)
