"""The authors' Keras weights (ASMNet or the mnv2 baseline, ``.h5``) as Flax variables.

Reads the file with h5py only (no TensorFlow), finds the architecture and the landmark count from
the layers present, and returns ``(model, variables)`` for :func:`asmnet_jax.models.create_model`
with exactly the tree ``model.init`` produces.

File layouts understood (Keras layer names are those of ``keras.applications.MobileNetV2``):

* Keras 2 full model (``tf_keras`` / TF 2.x ``model.save('x.h5')``): group ``model_weights``
  with attribute ``layer_names``; one group per layer whose ``weight_names`` attribute lists
  dataset paths relative to that group: ``Conv1/kernel:0``,
  ``block_1_depthwise/depthwise_kernel:0``, ``bn_Conv1/gamma:0`` .. ``bn_Conv1/moving_variance:0``,
  ``O_L/kernel:0``, ``O_L/bias:0``.
* Keras 3 full model (``keras.Model.save('x.h5')``, Keras 3's legacy HDF5 format): the same
  layout, but names carry no ``:0`` and depthwise kernels are called ``kernel``:
  ``Conv1/kernel``, ``block_1_depthwise/kernel``, ``bn_Conv1/moving_variance``.
* Keras 2 ``save_weights('x.h5')``: the same layer groups at the file root (root ``layer_names``).
* Keras 3 ``save_weights('x.weights.h5')``: ``layers/<class>[_k]/vars/<i>`` (class
  ``batch_normalization``, ``conv2d``, ``depthwise_conv2d`` or ``dense``), the ``vars`` group's
  ``name`` attribute holding the layer name and the datasets numbered in creation order (BN:
  gamma, beta, moving mean, moving variance).

Mapping (Flax module under ``params/backbone`` <- Keras layer): ``stem`` <- ``Conv1``,
``stem_bn`` <- ``bn_Conv1``; ``block_0/{depthwise,depthwise_bn,project,project_bn}`` <-
``expanded_conv_depthwise``, ``expanded_conv_depthwise_BN``, ``expanded_conv_project``,
``expanded_conv_project_BN``; ``block_i/{expand,expand_bn,depthwise,depthwise_bn,project,
project_bn}`` <- ``block_i_expand``, ``block_i_expand_BN``, ..., ``block_i_project_BN``;
``top``/``top_bn`` <- ``Conv_1``/``Conv_1_bn``; ``landmark_head``/``pose_head`` (directly under
``params``) <- ``O_L``/``O_P`` (or the Dense layers with 2n and 3 outputs). BN gamma/beta ->
``scale``/``bias``, moving mean/variance -> ``batch_stats`` ``mean``/``var``; depthwise kernels
(3, 3, C, 1) -> (3, 3, 1, C); conv and dense kernels keep their layout.

The authors' heads predict landmarks as ``(112 - x_px) / 224`` and pose in degrees / 65. With
``convert_coordinates=True`` (default) the conversions of :mod:`asmnet_jax.landmarks` are folded
into the heads (landmark kernel * -1, bias -> -bias + AUTHORS_LANDMARK_OFFSET; pose kernel and
bias * AUTHORS_POSE_SCALE), so the model predicts in this project's conventions; with ``False``
the outputs equal the Keras model's.
"""

from __future__ import annotations

import os
import re
from functools import partial

import h5py
import numpy as np

from asmnet_jax.errors import ModelError
from asmnet_jax.landmarks import (authors_to_model_landmarks, authors_to_model_pose,
                                  check_num_landmarks)
from asmnet_jax.models import create_model

#: Layers every MobileNetV2-derived model has (used to recognise one).
MOBILENET_MARKERS = ("Conv1", "bn_Conv1", "expanded_conv_depthwise")
#: Names the authors gave the landmark and pose heads.
LANDMARK_HEAD, POSE_HEAD = "O_L", "O_P"
#: Flax BN variable -> Keras BN weight.
_BN_WEIGHTS = {"scale": "gamma", "bias": "beta", "mean": "moving_mean", "var": "moving_variance"}
#: Keras 2 calls the depthwise kernel ``depthwise_kernel``, Keras 3 ``kernel``.
_WEIGHT_ALIASES = {"depthwise_kernel": "kernel"}
#: Variable order per layer class in Keras 3 ``.weights.h5`` files.
_KERAS3_VARIABLES = {
    "batch_normalization": ("gamma", "beta", "moving_mean", "moving_variance"),
    "conv2d": ("kernel", "bias"),
    "depthwise_conv2d": ("kernel", "bias"),
    "dense": ("kernel", "bias"),
}
_MAX_LISTED = 8

__all__ = ["load_keras_h5", "read_keras_weights", "keras_layer_name"]


# ----------------------------------------------------------------------------------------------
# Reading the file: {Keras layer name: {weight name: array}}


def _text(value) -> str:
    return value.decode("utf8") if isinstance(value, bytes) else str(value)


def _attr_list(group, name):
    """A string-list attribute, also in Keras' chunked form (``name0``, ``name1``, ...), or None."""
    if name in group.attrs:
        values = group.attrs[name]
    elif f"{name}0" in group.attrs:
        chunks, index = [], 0
        while f"{name}{index}" in group.attrs:
            chunks.extend(np.atleast_1d(group.attrs[f"{name}{index}"]).tolist())
            index += 1
        values = chunks
    else:
        return None
    return [_text(v) for v in np.atleast_1d(values).tolist()]


def _weight_kind(dataset_name: str) -> str:
    """``block_1_depthwise/depthwise_kernel:0`` -> ``kernel``; ``bn_Conv1/gamma`` -> ``gamma``."""
    kind = dataset_name.split("/")[-1].split(":")[0]
    return _WEIGHT_ALIASES.get(kind, kind)


def _add_weight(layers, layer, kind, value, path):
    weights = layers.setdefault(layer, {})
    if kind in weights:
        raise ModelError(f"{path}: Keras layer {layer!r} has two weights named {kind!r}")
    weights[kind] = np.asarray(value, dtype=np.float32)


def _read_layer_groups(root, path) -> dict:
    """Keras 2 / Keras 3 legacy layout: ``layer_names`` groups, datasets in ``weight_names``."""
    layers = {}
    for layer in _attr_list(root, "layer_names"):
        if layer not in root:
            raise ModelError(f"{path}: Keras layer {layer!r} is listed but has no group")
        group = root[layer]
        names = _attr_list(group, "weight_names") or []
        # A nested model stores the weights of many layers in one group; its weight names are
        # '<inner layer>/<weight>'. A plain layer's weights all belong to the group itself.
        owners = {name.split("/")[-2] if "/" in name else layer for name in names}
        nested = len(owners) > 1
        for name in names:
            if name not in group:
                raise ModelError(f"{path}: Keras layer {layer!r} lists weight {name!r}, "
                                 "which the file does not contain")
            owner = name.split("/")[-2] if nested else layer
            _add_weight(layers, owner, _weight_kind(name), group[name][()], path)
    return layers


def _read_keras3_weights_file(group, path, layers=None) -> dict:
    """Keras 3 ``.weights.h5`` layout: ``layers/<class>[_k]/vars/<i>`` with a ``name`` attribute."""
    layers = {} if layers is None else layers
    for key in group["layers"]:
        child = group["layers"][key]
        if "layers" in child:  # a nested model
            _read_keras3_weights_file(child, path, layers)
        variables = child.get("vars")
        if variables is None or len(variables) == 0:
            continue
        if "name" not in variables.attrs:
            raise ModelError(f"{path}: this Keras 3 weights file does not record layer names "
                             f"(group 'layers/{key}'); save the model with model.save('x.h5')")
        layer = _text(variables.attrs["name"])
        layer_class = re.sub(r"_\d+$", "", key)
        order = _KERAS3_VARIABLES.get(layer_class)
        if order is None or len(variables) > len(order):
            raise ModelError(f"{path}: Keras layer {layer!r} is a {layer_class!r} with "
                             f"{len(variables)} weights, which no MobileNetV2-derived model has")
        for index, kind in enumerate(order[:len(variables)]):
            _add_weight(layers, layer, kind, variables[str(index)][()], path)
    return layers


def read_keras_weights(path) -> dict:
    """Reads every weight of a Keras ``.h5`` file.

    Returns {Keras layer name: {weight name: float32 array}}, weight names without ``:0`` and with
    depthwise kernels called ``kernel`` (shape (3, 3, C, 1), as Keras stores them). Layers without
    weights are left out. Raises FileNotFoundError or ModelError naming the file.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: no such file")
    if not h5py.is_hdf5(path):
        raise ModelError(f"{path}: not an HDF5 file (expected a Keras .h5 model or weights file)")
    with h5py.File(path, "r") as f:
        if "model_weights" in f and _attr_list(f["model_weights"], "layer_names") is not None:
            layers = _read_layer_groups(f["model_weights"], path)
        elif _attr_list(f, "layer_names") is not None:
            layers = _read_layer_groups(f, path)
        elif isinstance(f.get("layers"), h5py.Group):
            layers = _read_keras3_weights_file(f, path)
        else:
            raise ModelError(f"{path}: an HDF5 file, but not a Keras model or weights file "
                             f"(top-level entries: {sorted(f.keys())[:_MAX_LISTED]})")
    return layers


# ----------------------------------------------------------------------------------------------
# Flax <-> Keras names


def keras_layer_name(module_path, landmark_head=LANDMARK_HEAD, pose_head=POSE_HEAD) -> str:
    """The Keras layer behind a Flax module path.

    E.g. ``('backbone', 'block_3', 'expand_bn')`` -> ``'block_3_expand_BN'``,
    ``('backbone', 'block_0', 'depthwise')`` -> ``'expanded_conv_depthwise'``,
    ``('landmark_head',)`` -> ``landmark_head`` (the authors' ``'O_L'``).
    """
    module_path = tuple(module_path)
    if module_path == ("landmark_head",):
        return landmark_head
    if module_path == ("pose_head",):
        return pose_head
    fixed = {("backbone", "stem"): "Conv1", ("backbone", "stem_bn"): "bn_Conv1",
             ("backbone", "top"): "Conv_1", ("backbone", "top_bn"): "Conv_1_bn"}
    if module_path in fixed:
        return fixed[module_path]
    match = re.fullmatch(r"block_(\d+)", module_path[1]) if len(module_path) == 3 else None
    if module_path[0] != "backbone" or match is None:
        raise KeyError(f"no Keras layer is known for Flax module {'/'.join(module_path)}")
    index, sub = int(match.group(1)), module_path[2]
    prefix = "expanded_conv" if index == 0 else f"block_{index}"
    if sub.endswith("_bn"):
        return f"{prefix}_{sub[:-3]}_BN"
    return f"{prefix}_{sub}"


def _is_batch_norm(module_path) -> bool:
    return module_path[-1].endswith("bn")


def keras_source(key, landmark_head=LANDMARK_HEAD, pose_head=POSE_HEAD):
    """(Keras layer, weight name, is depthwise) behind a flattened Flax variable key
    ``(collection, *module path, leaf)``, e.g. ``('batch_stats', 'backbone', 'stem_bn', 'var')``
    -> ``('bn_Conv1', 'moving_variance', False)``."""
    module_path, leaf = tuple(key[1:-1]), key[-1]
    layer = keras_layer_name(module_path, landmark_head, pose_head)
    kind = _BN_WEIGHTS[leaf] if _is_batch_norm(module_path) else leaf
    return layer, kind, module_path[-1] == "depthwise"


def to_flax_layout(value, depthwise: bool):
    """A Keras weight in Flax's layout: depthwise kernels (3, 3, C, 1) -> (3, 3, 1, C)."""
    return np.transpose(value, (0, 1, 3, 2)) if depthwise else value


def _find_heads(layers, path):
    """(landmark head layer, pose head layer, landmark count) from the authors' names or shapes."""

    def outputs(layer):
        weights = layers[layer]
        if set(weights) == {"kernel", "bias"} and weights["kernel"].ndim == 2:
            return weights["kernel"].shape[1]
        return None

    if LANDMARK_HEAD in layers and POSE_HEAD in layers:
        landmark, pose = LANDMARK_HEAD, POSE_HEAD
    else:
        dense = {layer: outputs(layer) for layer in layers if outputs(layer) is not None}
        poses = [layer for layer, size in dense.items() if size == 3]
        marks = [layer for layer, size in dense.items() if size != 3 and size % 2 == 0]
        if len(poses) != 1 or len(marks) != 1:
            raise ModelError(
                f"{path}: cannot identify the heads: expected Dense layers {LANDMARK_HEAD!r} "
                f"(2n outputs) and {POSE_HEAD!r} (3 outputs), found Dense layers "
                f"{ {layer: size for layer, size in dense.items()} }")
        landmark, pose = marks[0], poses[0]
    size = outputs(landmark)
    if size is None or size % 2:
        raise ModelError(f"{path}: Keras layer {landmark!r} is not a Dense layer with 2n outputs")
    try:
        num_landmarks = check_num_landmarks(size // 2)
    except ValueError as error:
        raise ModelError(f"{path}: Keras layer {landmark!r}: {error}") from None
    return landmark, pose, num_landmarks


def _detect_model(layers, path):
    """("asmnet" or "mnv2", landmark head layer, pose head layer, landmark count)."""
    missing = [name for name in MOBILENET_MARKERS if name not in layers]
    if missing:
        found = sorted(layers)[:_MAX_LISTED]
        raise ModelError(f"{path}: not a MobileNetV2-derived Keras model (no layer "
                         f"{missing[0]!r}; layers with weights: {found}"
                         f"{' ...' if len(layers) > _MAX_LISTED else ''})")
    full = "Conv_1" in layers or any(name.startswith("block_16_") for name in layers)
    landmark, pose, num_landmarks = _find_heads(layers, path)
    return ("mnv2" if full else "asmnet"), landmark, pose, num_landmarks


def _abstract_variables(model):
    """Shapes of ``model.init``'s variables, without computing them."""
    import jax
    import jax.numpy as jnp

    images = jax.ShapeDtypeStruct((1, 32, 32, 3), jnp.float32)
    return jax.eval_shape(partial(model.init, train=False), jax.random.key(0), images)


# ----------------------------------------------------------------------------------------------
# Loading


def load_keras_h5(path, convert_coordinates: bool = True):
    """Loads the authors' Keras ASMNet / mnv2 ``.h5`` (full model or weights) as Flax variables.

    Args:
      path: the ``.h5`` file (Keras 2 or Keras 3 ``model.save``, or ``save_weights``).
      convert_coordinates: fold the authors' output conventions into the heads, so the model
        predicts landmarks as ``(x_px + 0.5) / 224 - 0.5`` and pose in radians (this project's
        conventions); False keeps the Keras outputs ((112 - x_px) / 224, degrees / 65).

    Returns:
      ``(model, variables)``: the Flax module from ``create_model(name, num_landmarks)`` and
      ``{'params': ..., 'batch_stats': ...}`` of float32 numpy arrays with the tree and shapes of
      ``model.init``. ``model.apply(variables, images)`` maps (B, H, W, 3) images in [0, 1] to
      landmarks (B, 2n) and pose (B, 3).

    Raises:
      FileNotFoundError: no such file.
      ModelError (a ValueError): not HDF5, not a MobileNetV2-derived Keras model, or a missing,
        extra or mis-shaped weight; the message names the file and the Keras layer.
    """
    from flax import traverse_util

    path = os.fspath(path)
    layers = read_keras_weights(path)
    name, landmark_head, pose_head, num_landmarks = _detect_model(layers, path)
    model = create_model(name, num_landmarks)
    expected = traverse_util.flatten_dict(_abstract_variables(model))

    flat, used, problems, bad_layers = {}, set(), [], set()
    for key, abstract in expected.items():
        layer, kind, depthwise = keras_source(key, landmark_head, pose_head)
        keras_shape = tuple(abstract.shape)
        if depthwise:  # Keras (3, 3, C, 1), Flax (3, 3, 1, C)
            keras_shape = keras_shape[:2] + keras_shape[:1:-1]
        if layer not in layers:
            if layer not in bad_layers:
                problems.append(f"missing Keras layer {layer!r}")
            bad_layers.add(layer)
            continue
        if kind not in layers[layer]:
            problems.append(f"Keras layer {layer!r} has no weight {kind!r} "
                            f"(it has {sorted(layers[layer])})")
            bad_layers.add(layer)
            continue
        value = layers[layer][kind]
        used.add((layer, kind))
        if value.shape != keras_shape:
            bad_layers.add(layer)
            problems.append(f"Keras layer {layer!r} weight {kind!r} has shape {value.shape}, "
                            f"expected {keras_shape} for {name} with {num_landmarks} landmarks")
            continue
        flat[key] = to_flax_layout(value, depthwise)
    for layer in sorted(layers):
        for kind in sorted(layers[layer]):
            if (layer, kind) not in used and layer not in bad_layers:
                problems.append(f"unexpected weight {kind!r} of Keras layer {layer!r} "
                                f"(not part of {name})")
    if problems:
        listed = "; ".join(problems[:_MAX_LISTED])
        more = f"; and {len(problems) - _MAX_LISTED} more" if len(problems) > _MAX_LISTED else ""
        raise ModelError(f"{path}: does not match {name} with {num_landmarks} landmarks: "
                         f"{listed}{more}")

    if convert_coordinates:
        kernel, bias = ("params", "landmark_head", "kernel"), ("params", "landmark_head", "bias")
        flat[kernel] = -flat[kernel]
        flat[bias] = authors_to_model_landmarks(flat[bias])
        for leaf in ("kernel", "bias"):
            flat[("params", "pose_head", leaf)] = authors_to_model_pose(
                flat[("params", "pose_head", leaf)])
    flat = {key: np.ascontiguousarray(value, dtype=np.float32) for key, value in flat.items()}
    variables = traverse_util.unflatten_dict(flat)
    _check_tree(variables, model, path)
    return model, variables


def _check_tree(variables, model, path):
    """Raises ModelError unless ``variables`` has exactly the tree and shapes of ``model.init``."""
    import jax

    expected = _abstract_variables(model)
    if jax.tree_util.tree_structure(variables) != jax.tree_util.tree_structure(expected):
        raise ModelError(f"{path}: imported variables do not have the tree of "
                         f"{type(model).__name__}")
    for (key, got), want in zip(jax.tree_util.tree_leaves_with_path(variables),
                                jax.tree_util.tree_leaves(expected)):
        if got.shape != want.shape or got.dtype != want.dtype:
            raise ModelError(f"{path}: {jax.tree_util.keystr(key)} is {got.shape} {got.dtype}, "
                             f"expected {want.shape} {want.dtype}")
