"""Loading a trained or imported model for evaluation, prediction and export.

:func:`load` accepts three kinds of path and returns a :class:`LoadedModel`:

* a training workdir (``config.json`` and ``checkpoints/`` written by ``asmnet-train``): the
  checkpoint with the best validation NME (``which="best"``, the default) or the newest
  (``which="latest"``), or the one at ``step``;
* one checkpoint of such a run, ``WORKDIR/checkpoints/STEP``;
* a model directory written by :func:`asmnet_jax.model_dir.save_model` (``model.json`` +
  ``variables/`` or ``variables.npz``), e.g. an authors' Keras model brought in by
  ``asmnet-import-keras``;
* the name of a model shipped inside the package (:func:`shipped_models`, e.g.
  ``asmnet-300w``), when no file or directory of that name exists.

The model's input size and face-box margin come from the run's config; a model directory may carry
them in ``model.json`` (``input_size``, ``margin``), and otherwise the authors' 224 px and
:data:`asmnet_jax.data.crop.DEFAULT_MARGIN` apply.

The shape model fitted on the training shapes (:class:`asmnet_jax.asm.ShapeModel`, for the
plausibility score of predictions) comes from the workdir's ``asm.npz`` (runs with the ASM loss)
or the model directory's ``asm.npz`` (optional); ``LoadedModel.shape_model`` is None without one.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Dict, Optional

import jax
import jax.numpy as jnp
import numpy as np

from asmnet_jax import model_dir, run_dir
from asmnet_jax.data import crop
from asmnet_jax.asm import ShapeModel
from asmnet_jax.errors import ModelError
from asmnet_jax.mesh import batch_sharding, make_mesh, replicate
from asmnet_jax.models import build_model
from asmnet_jax.steps import compile_eval_step

DEFAULT_INPUT_SIZE = 224
#: Where the package keeps its trained models (one model directory each).
PRETRAINED_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "pretrained")
#: The model asmnet-predict uses when given none.
DEFAULT_MODEL = "asmnet-300w"


def shipped_models() -> Dict[str, str]:
    """{name: model directory} of the models shipped inside the package."""
    if not os.path.isdir(PRETRAINED_DIR):
        return {}
    return {name: os.path.join(PRETRAINED_DIR, name) for name in sorted(os.listdir(PRETRAINED_DIR))
            if os.path.isfile(os.path.join(PRETRAINED_DIR, name, model_dir.MODEL_JSON))}


def resolve_model_path(path) -> str:
    """``path`` as an absolute path, or the directory of the shipped model named ``path``."""
    text = os.fspath(path)
    if not os.path.exists(text):
        shipped = shipped_models()
        if text in shipped:
            return shipped[text]
        names = ", ".join(shipped) or "none"
        raise FileNotFoundError(f"{os.path.abspath(text)}: no such file or directory, and not "
                                f"the name of a model shipped with the package ({names})")
    return os.path.abspath(text)


@dataclasses.dataclass
class LoadedModel:
    """A Flax module with its variables and the preprocessing it was trained with."""

    model: Any                      # flax.linen.Module (eval: ``model.apply(variables, x)``)
    variables: Dict[str, Any]       # {'params': ..., 'batch_stats': ...} of NumPy arrays
    model_name: str                 # "asmnet" or "mnv2"
    num_landmarks: int
    input_size: int
    margin: float
    path: str                       # what was loaded (a checkpoint step or a model directory)
    step: Optional[int] = None      # training step of a checkpoint
    config: Optional[Dict[str, Any]] = None   # the run's config.json, when there is one
    shape_model: Any = None         # asmnet_jax.asm.ShapeModel of the training shapes, or None

    def describe(self) -> Dict[str, Any]:
        shape = self.shape_model
        return {"model": self.model_name, "num_landmarks": self.num_landmarks,
                "input_size": self.input_size, "margin": self.margin, "path": self.path,
                "step": self.step,
                "shape_model": None if shape is None else {
                    "components": shape.num_components, "calibrated": shape.calibrated}}


def _check_shape_model(shape_model, where: str, num_landmarks: int):
    """``shape_model`` unless it does not fit ``num_landmarks`` (ModelError naming ``where``)."""
    if shape_model is not None and shape_model.dim != 2 * num_landmarks:
        raise ModelError(f"{where}: the shape model has {shape_model.dim} coordinates, the model "
                         f"{2 * num_landmarks}")
    return shape_model


def _read_run_shape_model(workdir: str, num_landmarks: int):
    path = run_dir.shape_model_path(workdir)
    if not os.path.isfile(path):
        return None
    try:
        shape_model = ShapeModel.load(path)
    except ValueError as error:
        raise ModelError(str(error)) from None
    return _check_shape_model(shape_model, path, num_landmarks)


def _read_config(workdir: str) -> Dict[str, Any]:
    config = run_dir.read_config(workdir)
    model_dir.check_description(config, os.path.join(workdir, run_dir.CONFIG_JSON))
    return config


def _load_run(workdir: str, step: Optional[int], which: str, model_kwargs) -> LoadedModel:
    config = _read_config(workdir)
    step, state, _ = run_dir.read_checkpoint(workdir, step, which)
    # A run that keeps a weight average evaluates and ships that average.
    variables = state.get("ema") or {"params": state["params"], "batch_stats": state["batch_stats"]}
    variables = model_dir.to_plain_dicts(
        _to_numpy(variables))  # plain nested dicts of float32 NumPy arrays
    # Evaluated in float32 with the platform's depthwise form unless asked otherwise.
    model = build_model(config, **{"dtype": "float32", "depthwise_impl": "auto", **model_kwargs})
    path = os.path.join(workdir, run_dir.CHECKPOINTS, str(step))
    _check_variables(model, variables, path, config)
    return LoadedModel(model=model, variables=variables, model_name=config["model"],
                       num_landmarks=int(config["num_landmarks"]),
                       input_size=int(config["input_size"]),
                       margin=float(config.get("margin", crop.DEFAULT_MARGIN)),
                       path=path, step=int(step), config=config,
                       shape_model=_read_run_shape_model(workdir, int(config["num_landmarks"])))


def _to_numpy(tree):
    return jax.tree_util.tree_map(lambda x: np.asarray(x, np.float32), tree)


def _check_variables(model, variables, where: str, config: Dict[str, Any]) -> None:
    """Raises naming ``where`` if ``variables`` do not have the tree and shapes of ``model`` (the
    ``model`` with ``num_landmarks`` of ``config``)."""
    abstract = jax.eval_shape(lambda: model.init(jax.random.key(0),
                                                 jnp.zeros((1, 32, 32, 3)), train=False))
    want = {k: v for k, v in abstract.items() if k in ("params", "batch_stats")}
    model_dir.check_fit(model_dir.variable_shapes(variables), model_dir.variable_shapes(want), where,
                        config)


def load(path, step: Optional[int] = None, which: str = "best", **model_kwargs) -> LoadedModel:
    """Loads a model from a training workdir, one of its checkpoints, or a model directory.

    Args:
      path: see the module docstring (a path, or a shipped model's name).
      step: a checkpoint step of a workdir (default: chosen by ``which``).
      which: ``"best"`` (lowest validation NME) or ``"latest"``, for a workdir.
      **model_kwargs: module settings passed to :func:`asmnet_jax.models.create_model`
        (``dtype``, ``depthwise_impl``, ...).

    Raises:
      FileNotFoundError: ``path`` does not exist and names no shipped model.
      ModelError: anything else that keeps the model from loading (not a workdir, checkpoint or
        model directory; no such step; variables that do not fit); the message names the path.
    """
    path = resolve_model_path(path)
    if os.path.isfile(os.path.join(path, model_dir.MODEL_JSON)):
        if step is not None:
            raise ModelError(f"{path}: a model directory has no steps (step={step} given)")
        info = model_dir.read_model_info(path)
        model, variables = model_dir.load_model(path, **model_kwargs)
        return LoadedModel(model=model, variables=variables, model_name=info["model"],
                           num_landmarks=int(info["num_landmarks"]),
                           input_size=int(info.get("input_size", DEFAULT_INPUT_SIZE)),
                           margin=float(info.get("margin", crop.DEFAULT_MARGIN)), path=path,
                           shape_model=_check_shape_model(
                               model_dir.load_shape_model(path),
                               os.path.join(path, model_dir.ASM_NPZ), int(info["num_landmarks"])))
    if os.path.isfile(os.path.join(path, "config.json")):
        return _load_run(path, step, which, model_kwargs)
    parent = os.path.dirname(path)
    if os.path.basename(parent) == "checkpoints" and os.path.basename(path).isdigit():
        if step is not None and step != int(os.path.basename(path)):
            raise ModelError(f"{path}: is the checkpoint of step {os.path.basename(path)}, "
                             f"but step={step} was given")
        return _load_run(os.path.dirname(parent), int(os.path.basename(path)), which,
                         model_kwargs)
    raise ModelError(f"{path}: neither a training workdir (config.json + checkpoints/), one of its "
                     "checkpoints (WORKDIR/checkpoints/STEP) nor a model directory (model.json + "
                     "variables/)")


def make_predictor(loaded: LoadedModel, mesh=None, flip: bool = False):
    """``predict(images) -> (landmarks (B, 2n), pose (B, 3))`` as NumPy, in model units.

    ``images`` is a uint8 (or [0, 1] float) batch (B, S, S, 3) with S = ``loaded.input_size``; B
    must be divisible by the mesh's device count (default: all local devices). One compilation per
    batch shape. ``flip`` averages with the mirrored prediction on flipped images
    (:func:`asmnet_jax.steps.eval_step`).
    """
    mesh = mesh if mesh is not None else make_mesh(jax.local_devices())
    predict = compile_eval_step(loaded.model, mesh, flip=flip)
    variables = replicate(loaded.variables, mesh)
    sharding = batch_sharding(mesh)

    def run(images):
        images = np.asarray(images)
        if images.ndim != 4 or images.shape[1:] != (loaded.input_size, loaded.input_size, 3):
            raise ValueError(f"images must be (B, {loaded.input_size}, {loaded.input_size}, 3), "
                             f"got {images.shape}")
        out = predict(variables, {"image": jax.device_put(images, sharding)})
        out = jax.device_get(out)
        return np.asarray(out["landmarks"]), np.asarray(out["pose"])

    return run
