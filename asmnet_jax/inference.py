"""Loading a trained or imported model for evaluation, prediction and export.

:func:`load` accepts three kinds of path and returns a :class:`LoadedModel`:

* a training workdir (``config.json`` and ``checkpoints/`` written by ``asmnet-train``): the
  checkpoint with the best validation NME (``which="best"``, the default) or the newest
  (``which="latest"``), or the one at ``step``;
* one checkpoint of such a run, ``WORKDIR/checkpoints/STEP``;
* a model directory written by :func:`asmnet_jax.checkpoints.save_model` (``model.json`` +
  ``variables/`` or ``variables.npz``), e.g. an authors' Keras model brought in by
  ``asmnet-import-keras``;
* the name of a model shipped inside the package (:func:`shipped_models`, e.g.
  ``asmnet-300w``), when no file or directory of that name exists.

The model's input size and face-box margin come from the run's config; a model directory may carry
them in ``model.json`` (``input_size``, ``margin``), and otherwise the authors' 224 px and
:data:`asmnet_jax.data.crop.DEFAULT_MARGIN` apply.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Dict, Optional

import numpy as np

from asmnet_jax import checkpoints as model_io
from asmnet_jax.data import crop
from asmnet_jax.errors import ModelError, OptionError

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
            if os.path.isfile(os.path.join(PRETRAINED_DIR, name, model_io.MODEL_JSON))}


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

    def describe(self) -> Dict[str, Any]:
        return {"model": self.model_name, "num_landmarks": self.num_landmarks,
                "input_size": self.input_size, "margin": self.margin, "path": self.path,
                "step": self.step}


def _read_config(workdir: str) -> Dict[str, Any]:
    path = os.path.join(workdir, "config.json")
    if not os.path.isfile(path):
        raise ModelError(f"{workdir}: no config.json (not a training workdir of asmnet-train)")
    try:
        with open(path) as f:
            config = json.load(f)
    except json.JSONDecodeError as err:
        raise ModelError(f"{path}: not valid JSON ({err})") from None
    for key in ("model", "num_landmarks", "input_size"):
        if key not in config:
            raise ModelError(f"{path}: missing key {key!r}")
    model_io.check_description(config, path)
    return config


def _build(model_name: str, num_landmarks: int, model_kwargs: Dict[str, Any]):
    from asmnet_jax.depthwise import resolve_impl
    from asmnet_jax.models import create_model

    kwargs = dict(model_kwargs)
    kwargs["depthwise_impl"] = resolve_impl(kwargs.get("depthwise_impl", "auto"),
                                            kwargs.get("dtype", "float32"))
    return create_model(model_name, num_landmarks, **kwargs)


def _load_run(workdir: str, step: Optional[int], which: str, model_kwargs) -> LoadedModel:
    import orbax.checkpoint as ocp

    config = _read_config(workdir)
    directory = os.path.join(workdir, "checkpoints")
    if not os.path.isdir(directory):
        raise ModelError(f"{workdir}: no checkpoints/ folder (has the run saved a checkpoint?)")
    # The same preservation settings as training are not needed to read: a plain manager.
    manager = ocp.CheckpointManager(directory, item_names=("state", "meta"),
                                    options=ocp.CheckpointManagerOptions(create=False))
    try:
        steps = sorted(manager.all_steps())
        if not steps:
            raise ModelError(f"{directory}: holds no checkpoint")
        if step is None:
            if which not in ("best", "latest"):
                raise OptionError(f"which must be 'best' or 'latest', got {which!r}")
            step = _best_step(manager, directory) if which == "best" else steps[-1]
        elif step not in steps:
            raise ModelError(f"{directory}: no checkpoint at step {step}; it has {steps}")
        try:
            restored = manager.restore(step, args=ocp.args.Composite(
                state=ocp.args.StandardRestore(), meta=ocp.args.JsonRestore()))
        except (ValueError, KeyError, OSError) as err:  # orbax / tensorstore reading the files
            raise ModelError(f"{os.path.join(directory, str(step))}: cannot read the checkpoint "
                             f"(truncated or corrupt?): {err}") from err
    finally:
        manager.close()
    state = restored["state"]
    # A run that keeps a weight average evaluates and ships that average.
    variables = state.get("ema") or {"params": state["params"], "batch_stats": state["batch_stats"]}
    variables = model_io._to_plain_dicts(
        _to_numpy(variables))  # plain nested dicts of float32 NumPy arrays
    kwargs = {"bn_momentum": config.get("bn_momentum", 0.99),
              "input_range": config.get("input_range", "unit")}
    if config["model"] == "asmnet" and "dropout_rate" in config:
        kwargs["dropout_rate"] = config["dropout_rate"]
    kwargs.update(model_kwargs)
    model = _build(config["model"], int(config["num_landmarks"]), kwargs)
    _check_variables(model, variables, f"{directory}/{step}", config)
    return LoadedModel(model=model, variables=variables, model_name=config["model"],
                       num_landmarks=int(config["num_landmarks"]),
                       input_size=int(config["input_size"]),
                       margin=float(config.get("margin", crop.DEFAULT_MARGIN)),
                       path=os.path.join(directory, str(step)), step=int(step), config=config)


def _best_step(manager, directory: str) -> int:
    """The step whose ``meta`` records the lowest validation NME, else the newest."""
    import orbax.checkpoint as ocp

    best, best_nme = None, float("inf")
    for step in manager.all_steps():
        try:
            meta = manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))
        except Exception:  # noqa: BLE001 - an unreadable checkpoint is not a candidate
            continue
        nme = (meta["meta"] or {}).get("val_nme")
        if nme is not None and nme < best_nme:
            best, best_nme = step, nme
    return int(best) if best is not None else int(max(manager.all_steps()))


def _to_numpy(tree):
    import jax

    return jax.tree_util.tree_map(lambda x: np.asarray(x, np.float32), tree)


def _check_variables(model, variables, where: str, config: Dict[str, Any]) -> None:
    """Raises naming ``where`` if ``variables`` do not have the tree and shapes of ``model`` (the
    ``model`` with ``num_landmarks`` of ``config``)."""
    import jax
    import jax.numpy as jnp

    abstract = jax.eval_shape(lambda: model.init(jax.random.key(0),
                                                 jnp.zeros((1, 32, 32, 3)), train=False))
    want = {k: v for k, v in abstract.items() if k in ("params", "batch_stats")}
    model_io.check_fit(model_io.variable_shapes(variables), model_io.variable_shapes(want), where,
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
    if os.path.isfile(os.path.join(path, model_io.MODEL_JSON)):
        if step is not None:
            raise ModelError(f"{path}: a model directory has no steps (step={step} given)")
        info = model_io.read_model_info(path)
        model, variables = model_io.load_model(path, **model_kwargs)
        return LoadedModel(model=model, variables=variables, model_name=info["model"],
                           num_landmarks=int(info["num_landmarks"]),
                           input_size=int(info.get("input_size", DEFAULT_INPUT_SIZE)),
                           margin=float(info.get("margin", crop.DEFAULT_MARGIN)), path=path)
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
    import jax

    from asmnet_jax import steps as steps_lib

    mesh = mesh if mesh is not None else steps_lib.make_mesh(jax.local_devices())
    predict = steps_lib.compile_eval_step(loaded.model, mesh, flip=flip)
    variables = steps_lib.replicate(loaded.variables, mesh)
    sharding = steps_lib.batch_sharding(mesh)

    def run(images):
        images = np.asarray(images)
        if images.ndim != 4 or images.shape[1:] != (loaded.input_size, loaded.input_size, 3):
            raise ValueError(f"images must be (B, {loaded.input_size}, {loaded.input_size}, 3), "
                             f"got {images.shape}")
        out = predict(variables, {"image": jax.device_put(images, sharding)})
        out = jax.device_get(out)
        return np.asarray(out["landmarks"]), np.asarray(out["pose"])

    return run
