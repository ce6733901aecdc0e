"""A model on disk: Flax variables as an orbax checkpoint plus a small JSON description.

Layout of a model directory::

    DIR/model.json    {"format": "asmnet_jax.model/1", "model": "asmnet" | "mnv2",
                       "num_landmarks": 68 | 98, "input_range": "unit" | "signed"
                       (optional, default "unit"), ...extra keys}
    DIR/variables/    orbax StandardCheckpointer checkpoint of {'params': ..., 'batch_stats': ...}
    or
    DIR/variables.npz the same arrays in one NumPy archive, keys 'params/backbone/stem/kernel',
                      ...; the compact form of the models shipped inside the package (float16
                      allowed: they are read back as float32)
    DIR/asm.npz       optional: the shape model (:class:`asmnet_jax.asm.ShapeModel`) fitted on
                      the training shapes, for the plausibility score of predictions
                      (:func:`load_shape_model`)

``save_model`` writes one (``compact=True``: the ``.npz`` form, in ``dtype``), ``load_model``
rebuilds the module with :func:`asmnet_jax.models.create_model` and restores the variables
against the tree of ``model.init``, so a checkpoint that does not fit the described model fails
loudly.
"""

from __future__ import annotations

import json
import os
import shutil
import zipfile
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from flax import traverse_util

from asmnet_jax.asm import ShapeModel
from asmnet_jax.errors import ModelError
from asmnet_jax.files import atomic_open
from asmnet_jax.landmarks import FLIP_ORDERS
from asmnet_jax.models import MODELS, create_model

FORMAT = "asmnet_jax.model/1"
MODEL_JSON = "model.json"
VARIABLES_DIR = "variables"
VARIABLES_NPZ = "variables.npz"
ASM_NPZ = "asm.npz"


def save_model(directory, model_name: str, num_landmarks: int, variables, extra=None,
               overwrite: bool = False, compact: bool = False, dtype=None,
               shape_model=None) -> str:
    """Writes ``variables`` of ``create_model(model_name, num_landmarks)`` to ``directory``.

    Args:
      directory: model directory (created if needed; made absolute for orbax).
      model_name: ``"asmnet"`` or ``"mnv2"``.
      num_landmarks: 68 or 98 (the landmark head has 2n outputs).
      variables: ``{'params': ..., 'batch_stats': ...}`` of numpy or jax arrays.
      extra: JSON-serialisable dict merged into ``model.json`` (e.g. source, coordinate convention).
      overwrite: replace an existing model in ``directory``; otherwise that raises
        :class:`asmnet_jax.errors.ModelError`.
      compact: write ``variables.npz`` (one file) instead of the orbax ``variables/`` folder.
      dtype: store the arrays in this NumPy dtype (e.g. ``np.float16``; compact form only).
      shape_model: an :class:`asmnet_jax.asm.ShapeModel` to keep beside the model as ``asm.npz``
        (float32, a few KB); None writes none (and ``overwrite`` removes an old one).

    Returns:
      The absolute directory.
    """

    directory = os.path.abspath(os.fspath(directory))
    create_model(model_name, num_landmarks)  # validates both
    info = {"format": FORMAT, "model": model_name, "num_landmarks": int(num_landmarks)}
    for key, value in (extra or {}).items():
        if key in info:
            raise ValueError(f"extra key {key!r} would overwrite a model.json field")
        info[key] = value
    text = json.dumps(info, indent=2, sort_keys=True)  # fail on bad extras before writing

    if dtype is not None and not compact:
        raise ValueError("dtype is only supported with compact=True")
    variables_dir = os.path.join(directory, VARIABLES_DIR)
    npz_path = os.path.join(directory, VARIABLES_NPZ)
    json_path = os.path.join(directory, MODEL_JSON)
    if any(os.path.exists(p) for p in (variables_dir, npz_path, json_path)):
        if not overwrite:
            raise ModelError(f"{directory}: already holds a model; choose another directory "
                             "or overwrite it")
        for path in (json_path, npz_path, os.path.join(directory, ASM_NPZ)):
            if os.path.exists(path):
                os.remove(path)
        shutil.rmtree(variables_dir, ignore_errors=True)
    os.makedirs(directory, exist_ok=True)
    if compact:
        flat = traverse_util.flatten_dict(to_plain_dicts(variables), sep="/")
        arrays = {key: np.asarray(value, dtype=dtype or np.asarray(value).dtype)
                  for key, value in flat.items()}
        with atomic_open(npz_path, "wb") as f:
            np.savez(f, **arrays)
    else:
        with ocp.StandardCheckpointer() as checkpointer:
            checkpointer.save(variables_dir, to_plain_dicts(variables))
            checkpointer.wait_until_finished()
    if shape_model is not None:
        shape_model.save(os.path.join(directory, ASM_NPZ))
    with atomic_open(json_path) as f:
        f.write(text + "\n")
    return directory


def load_shape_model(directory):
    """The :class:`asmnet_jax.asm.ShapeModel` kept in the model directory (``asm.npz``), or None
    when it has none; :class:`ModelError` naming the file if it is unreadable."""
    path = os.path.join(os.path.abspath(os.fspath(directory)), ASM_NPZ)
    if not os.path.isfile(path):
        return None
    try:
        return ShapeModel.load(path)
    except ValueError as error:
        raise ModelError(str(error)) from None


def read_model_info(directory) -> dict:
    """``directory/model.json`` as a dict; ModelError naming the directory if it is no model."""
    directory = os.path.abspath(os.fspath(directory))
    json_path = os.path.join(directory, MODEL_JSON)
    has_variables = os.path.isdir(os.path.join(directory, VARIABLES_DIR)) or \
        os.path.isfile(os.path.join(directory, VARIABLES_NPZ))
    if not os.path.isfile(json_path) or not has_variables:
        raise ModelError(f"{directory}: not a saved model (expected {MODEL_JSON} and "
                         f"{VARIABLES_DIR}/ or {VARIABLES_NPZ} written by "
                         "asmnet_jax.model_dir.save_model)")
    try:
        with open(json_path) as f:
            info = json.load(f)
    except json.JSONDecodeError as error:
        raise ModelError(f"{json_path}: not valid JSON ({error})") from None
    if not isinstance(info, dict) or info.get("model") not in MODELS or "num_landmarks" not in info:
        raise ModelError(f"{json_path}: expected 'model' (one of {sorted(MODELS)}) and "
                         "'num_landmarks'")
    check_description(info, json_path)
    return info


def check_description(info: dict, where: str) -> None:
    """Raises :class:`ModelError` naming ``where`` (a ``model.json`` or a run's ``config.json``)
    unless ``info`` names a known ``model`` and a landmark markup this project knows."""
    if info.get("model") not in MODELS:
        raise ModelError(f"{where}: 'model' is {info.get('model')!r}; expected one of "
                         f"{sorted(MODELS)}")
    count = info.get("num_landmarks")
    if isinstance(count, bool) or count not in FLIP_ORDERS:
        raise ModelError(f"{where}: 'num_landmarks' is {count!r}; this project knows "
                         + " and ".join(str(n) for n in sorted(FLIP_ORDERS)))


def load_model(directory, **model_kwargs):
    """Reverses :func:`save_model`.

    Args:
      directory: a directory written by :func:`save_model`.
      **model_kwargs: module settings for :func:`create_model` (e.g. ``dtype``, ``depthwise_impl``).

    Returns:
      ``(model, variables)``: the Flax module and ``{'params': ..., 'batch_stats': ...}`` of float32
      numpy arrays with the tree and shapes of ``model.init``. ``model.json``'s other keys are
      available through :func:`read_model_info`.
    """
    import jax.numpy as jnp

    directory = os.path.abspath(os.fspath(directory))
    info = read_model_info(directory)
    model_kwargs.setdefault("input_range", info.get("input_range", "unit"))
    model = create_model(info["model"], int(info["num_landmarks"]), **model_kwargs)
    images = jax.ShapeDtypeStruct((1, 32, 32, 3), jnp.float32)
    abstract = jax.eval_shape(partial(model.init, train=False), jax.random.key(0), images)
    target = jax.tree_util.tree_map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), abstract)
    npz_path = os.path.join(directory, VARIABLES_NPZ)
    if os.path.isfile(npz_path):
        return model, _read_npz(npz_path, target, info)
    variables_dir = os.path.join(directory, VARIABLES_DIR)
    try:
        with ocp.StandardCheckpointer() as checkpointer:
            # The stored shapes first: orbax restores arrays of other shapes than the target's.
            stored = checkpointer.metadata(variables_dir).item_metadata
            if stored is None:
                raise ModelError(f"{variables_dir}: cannot read the variables (no readable "
                                 "metadata: truncated or corrupt?)")
            check_fit(variable_shapes(stored), variable_shapes(target), variables_dir, info)
            variables = checkpointer.restore(variables_dir, target)
    except ModelError:
        raise
    except (ValueError, KeyError, OSError) as error:  # orbax / tensorstore reading the files
        raise ModelError(f"{variables_dir}: cannot read the variables (truncated or corrupt?): "
                         f"{error}") from error
    variables = jax.tree_util.tree_map(lambda x: np.asarray(x, dtype=np.float32), variables)
    return model, to_plain_dicts(variables)


def variable_shapes(tree) -> dict:
    """``{'params/backbone/stem/kernel': shape, ...}`` of a tree of arrays or array metadata."""

    def name(path):
        return "/".join(str(getattr(key, "key", getattr(key, "name", key))) for key in path)

    leaves = jax.tree_util.tree_flatten_with_path(to_plain_dicts(tree))[0]
    return {name(path): tuple(leaf.shape) for path, leaf in leaves}


def check_fit(stored: dict, wanted: dict, where: str, info: dict) -> None:
    """Raises :class:`ModelError` naming ``where`` unless the ``{name: shape}`` of the stored
    variables are those of the model ``info`` describes."""
    missing = sorted(set(wanted) - set(stored))
    extra = sorted(set(stored) - set(wanted))
    wrong = sorted(k for k in set(wanted) & set(stored)
                   if tuple(stored[k]) != tuple(wanted[k]))
    if missing or extra or wrong:
        raise ModelError(f"{where}: variables do not fit {info['model']} with "
                         f"{info['num_landmarks']} landmarks (missing {missing[:3]}, unexpected "
                         f"{extra[:3]}, wrong shapes {wrong[:3]})")


def _read_npz(path, target, info):
    """The variables of a compact model directory, checked against ``target``'s tree."""

    try:
        with np.load(path) as archive:
            stored = {key: archive[key] for key in archive.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as error:
        raise ModelError(f"{path}: not a readable NumPy archive ({error})") from None
    wanted = traverse_util.flatten_dict(to_plain_dicts(target), sep="/")
    check_fit({key: value.shape for key, value in stored.items()},
               {key: value.shape for key, value in wanted.items()}, path, info)
    flat = {key: np.asarray(stored[key], np.float32) for key in wanted}
    return traverse_util.unflatten_dict(flat, sep="/")


def to_plain_dicts(tree):
    """Nested mappings (dict, FrozenDict) -> nested dicts, leaves untouched."""
    if hasattr(tree, "items"):
        return {key: to_plain_dicts(value) for key, value in tree.items()}
    return tree
