"""Starting weights for a training run: ImageNet MobileNetV2, any saved model, BN re-estimation.

``config.init`` chooses where the weights of a fresh run come from (a resumed run always takes
its own checkpoint):

* ``"scratch"``: Keras' initialisers (glorot-uniform kernels, unit BN).
* ``"imagenet"``: the backbone from the Keras MobileNetV2 ImageNet weights file,
  ``mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224_no_top.h5``
  (:data:`IMAGENET_FILE`), the file ``keras.applications.MobileNetV2(weights="imagenet",
  include_top=False)`` downloads into ``$KERAS_HOME/models`` or ``~/.keras/models``. ASMNet takes
  the stem and blocks 0-15, mnv2 the whole network (blocks 0-16 and the 1280-channel conv). The
  heads start as in a scratch run. ImageNet networks saw inputs in [-1, 1], so such runs need
  ``config.input_range = "signed"`` (the model maps its [0, 1] images to [-1, 1] itself).
* ``"checkpoint"``: every variable of a training workdir, one of its checkpoints or a model
  directory (:func:`asmnet_jax.inference.load`) whose path and shape match, for fine-tuning
  (synthetic faces then 300W, 300W then WFLW). Heads of another landmark count start anew.

**BN re-estimation** (:func:`reestimate_batch_norm`). Weight files derived from TFLite (such as
the one the project was developed with) have every BatchNorm folded into its convolution: scale
1, mean 0, variance 1 - eps, the folded bias as BN bias. In inference mode that is the original
network; in training mode, batch statistics would rescale each channel to unit variance and wash
the features out in the first step. So before training, the loaded network runs in inference
mode over a few hundred training crops, each BN's input gets its per-channel mean ``m`` and
variance ``v``, and the BN is rewritten to compute the same function with those statistics::

    scale' = scale * sqrt(v + eps) / sqrt(var + eps)
    bias'  = bias + (m - mean) * scale / sqrt(var + eps)
    mean'  = m,  var' = v

Inference is unchanged, and training-mode BN, which normalises with the batch's own statistics,
starts from the same function. With a file of genuine BN statistics the rewrite is harmless.
"""

from __future__ import annotations

import logging
import os
from typing import Dict, Iterable, Optional, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from asmnet_jax import inference, keras_import
from asmnet_jax.models import BN_EPSILON, BatchNorm
from asmnet_jax.steps import images_to_unit
from asmnet_jax.model_dir import to_plain_dicts
from asmnet_jax.errors import AsmnetError

log = logging.getLogger(__name__)

#: Where a run's weights come from (``config.init``).
INITS = ("scratch", "imagenet", "checkpoint")
#: The name Keras gives the ImageNet MobileNetV2 (alpha 1.0, 224) file without the classifier.
IMAGENET_FILE = "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224_no_top.h5"
#: How the file is fetched on a machine with network access.
IMAGENET_HOWTO = ('python -c "import keras; keras.applications.MobileNetV2('
                  'weights=\'imagenet\', include_top=False)"')


class InitError(AsmnetError, ValueError):
    """Starting weights that cannot be had or do not fit; the message names the file."""


# ----------------------------------------------------------------------------------------------
# ImageNet


def imagenet_search_paths() -> Tuple[str, ...]:
    """Where Keras caches :data:`IMAGENET_FILE`: ``$KERAS_HOME/models``, then
    ``~/.keras/models``."""
    places = []
    if os.environ.get("KERAS_HOME"):
        places.append(os.path.join(os.environ["KERAS_HOME"], "models", IMAGENET_FILE))
    places.append(os.path.join(os.path.expanduser("~"), ".keras", "models", IMAGENET_FILE))
    return tuple(places)


def check_checkpoint_path(path: str) -> str:
    """``config.init_path`` of a warm start as an absolute path (a workdir, a checkpoint, a model
    directory or a shipped model's name); raises :class:`InitError` naming it if there is none."""
    try:
        return inference.resolve_model_path(path)
    except FileNotFoundError as error:
        raise InitError(f"config.init_path: {error}") from None


def find_imagenet_weights(path: str = "") -> str:
    """The ImageNet weights file: ``path`` if given, else the first file in Keras' cache.

    Raises InitError saying where it looked and how to get the file."""
    candidates = (os.path.expanduser(path),) if path else imagenet_search_paths()
    for candidate in candidates:
        if os.path.isfile(candidate):
            return os.path.abspath(candidate)
    looked = ", ".join(candidates)
    raise InitError(
        f"ImageNet MobileNetV2 weights not found (looked for {looked}). On a machine with network "
        f"access, run {IMAGENET_HOWTO} to download {IMAGENET_FILE} into ~/.keras/models, copy it "
        "here, and set config.init_path to it (or put it in $KERAS_HOME/models or "
        "~/.keras/models)")


def _backbone_keys(variables) -> Iterable[tuple]:
    """Flattened keys of every backbone variable (params and batch_stats)."""
    flat = traverse_util.flatten_dict(variables)
    return [key for key in flat if len(key) > 2 and key[1] == "backbone"]


def load_imagenet_backbone(path: str, variables) -> Tuple[Dict, Dict]:
    """Variables with their backbone read from a Keras MobileNetV2 ``.h5`` file.

    Args:
      path: Keras 2 or Keras 3 ``.h5`` (weights or full model) of ``keras.applications.
        MobileNetV2``; layers beyond the model's backbone (ASMNet stops at block 15) are ignored.
      variables: ``{'params', 'batch_stats'}`` of ASMNet or mnv2 (``model.init``'s tree).

    Returns:
      (new variables as nested dicts of float32 NumPy arrays, a summary for the log).
    """
    try:
        layers = keras_import.read_keras_weights(path)
    except (OSError, ValueError) as error:
        raise InitError(str(error)) from None
    missing = [name for name in keras_import.MOBILENET_MARKERS if name not in layers]
    if missing:
        raise InitError(f"{path}: not a Keras MobileNetV2 weights file (no layer {missing[0]!r}; "
                        f"its layers with weights: {sorted(layers)[:8]})")
    flat = {key: np.asarray(value) for key, value in
            traverse_util.flatten_dict(to_plain_dicts(variables)).items()}
    problems, loaded = [], 0
    for key in _backbone_keys(variables):
        layer, kind, depthwise = keras_import.keras_source(key)
        if layer not in layers or kind not in layers[layer]:
            problems.append(f"no weight {kind!r} of Keras layer {layer!r}")
            continue
        value = keras_import.to_flax_layout(layers[layer][kind], depthwise)
        if value.shape != flat[key].shape:
            problems.append(f"Keras layer {layer!r} weight {kind!r} has shape {value.shape}, "
                            f"expected {flat[key].shape}")
            continue
        flat[key] = np.ascontiguousarray(value, np.float32)
        loaded += int(value.size)
    if problems:
        more = f" (and {len(problems) - 5} more)" if len(problems) > 5 else ""
        raise InitError(f"{path}: not the weights of a MobileNetV2 (alpha 1.0) backbone: "
                        f"{'; '.join(problems[:5])}{more}")
    folded = _looks_folded(flat)
    summary = {"source": os.path.abspath(path), "backbone_values": loaded,
               "folded_batch_norm": folded}
    return traverse_util.unflatten_dict(flat), summary


def _looks_folded(flat) -> bool:
    """True when every BN has mean 0 and scale 1 (a BN folded into its convolution)."""
    means = [v for k, v in flat.items() if k[0] == "batch_stats" and k[-1] == "mean"]
    scales = [v for k, v in flat.items() if k[0] == "params" and k[-2].endswith("bn")
              and k[-1] == "scale"]
    return bool(means) and all(np.all(m == 0) for m in means) and \
        all(np.all(s == 1) for s in scales)


# ----------------------------------------------------------------------------------------------
# A checkpoint or model directory


def load_checkpoint_weights(path: str, model_name: str, num_landmarks: int, input_range: str,
                            variables) -> Tuple[Dict, Dict]:
    """Variables that take every leaf of a saved model whose path and shape match.

    Args:
      path: a training workdir (its best checkpoint), ``WORKDIR/checkpoints/STEP`` or a model
        directory.
      model_name, num_landmarks, input_range: the run's model; the saved one must be the same
        architecture and input range. A different landmark count keeps the new run's heads.
      variables: the new run's initial ``{'params', 'batch_stats'}``.

    Returns:
      (new variables, a summary for the log).
    """
    try:
        saved = inference.load(path)
    except (OSError, ValueError) as error:
        raise InitError(f"config.init_path: {error}") from None
    if saved.model_name != model_name:
        raise InitError(f"{saved.path}: is a {saved.model_name} model; this run trains "
                        f"{model_name}")
    saved_range = getattr(saved.model, "input_range", "unit")
    if saved_range != input_range:
        raise InitError(f"{saved.path}: was trained on inputs in the {saved_range!r} range; set "
                        f"config.input_range={saved_range!r} to start from it")
    source = traverse_util.flatten_dict(saved.variables)
    flat = {key: np.asarray(value) for key, value in
            traverse_util.flatten_dict(to_plain_dicts(variables)).items()}
    copied, fresh = 0, []
    for key, value in flat.items():
        if key in source and np.shape(source[key]) == value.shape:
            flat[key] = np.asarray(source[key], np.float32)
            copied += 1
        else:
            fresh.append("/".join(key))
    heads_new = sorted({name.split("/")[1] for name in fresh if name.split("/")[1] in
                        ("landmark_head", "pose_head")})
    others = [name for name in fresh if name.split("/")[1] not in ("landmark_head", "pose_head")]
    if others:
        raise InitError(f"{saved.path}: does not fit this {model_name}: "
                        f"{', '.join(others[:4])} differ")
    summary = {"source": saved.path, "step": saved.step, "copied": copied,
               "new_heads": heads_new, "saved_landmarks": saved.num_landmarks}
    if heads_new:
        log.info("warm start: the %s of %s (%d points) start anew for %d points", " and ".join(
            heads_new), saved.path, saved.num_landmarks, num_landmarks)
    return traverse_util.unflatten_dict(flat), summary


# ----------------------------------------------------------------------------------------------
# BN re-estimation


def batch_norm_moments(model, variables, images: Iterable[np.ndarray]) -> Dict[tuple, tuple]:
    """Per-channel mean and variance of every BN's input, in inference mode, over ``images``.

    Args:
      model: ASMNet or mnv2 (any module made of :class:`asmnet_jax.models.BatchNorm`).
      variables: its variables.
      images: an iterable of (B, S, S, 3) uint8 or [0, 1] float batches.

    Returns:
      {BN module path (tuple of names): (mean (C,), variance (C,))} as float64 NumPy arrays.
    """
    def record(next_fun, args, kwargs, context):
        module = context.module
        if isinstance(module, BatchNorm) and context.method_name == "__call__":
            x = args[0].astype(jnp.float32)
            axes = tuple(range(x.ndim - 1))
            module.sow("bn_moments", "moments", jnp.stack([x.mean(axes), jnp.square(x).mean(axes)]))
        return next_fun(*args, **kwargs)

    @jax.jit
    def moments(variables, batch):
        with nn.intercept_methods(record):
            _, state = model.apply(variables, images_to_unit(batch), train=False,
                                   mutable=["bn_moments"])
        return state["bn_moments"]

    sums, count = None, 0
    for batch in images:
        batch = np.asarray(batch)
        out = traverse_util.flatten_dict(jax.device_get(moments(variables, batch)))
        out = {key[:-1]: np.asarray(value[0], np.float64) * len(batch)
               for key, value in out.items()}
        sums = out if sums is None else {key: sums[key] + out[key] for key in sums}
        count += len(batch)
    if not count:
        raise InitError("BN re-estimation got no images")
    result = {}
    for path, total in sums.items():
        mean, mean2 = total / count
        result[path] = (mean, np.maximum(mean2 - mean * mean, 0.0))
    return result


def reestimate_batch_norm(model, variables, images: Iterable[np.ndarray],
                          epsilon: Optional[float] = None) -> Tuple[Dict, Dict]:
    """Rewrites every BN so that it has the statistics of ``images`` and the same function.

    See the module docstring for the formulas. Returns (new variables as nested dicts of float32
    NumPy arrays, a summary for the log: layers, images, the median factor by which the scales
    changed).
    """
    eps = BN_EPSILON if epsilon is None else epsilon
    images = list(images)
    moments = batch_norm_moments(model, variables, images)
    params = traverse_util.flatten_dict(to_plain_dicts(variables["params"]))
    stats = traverse_util.flatten_dict(to_plain_dicts(variables["batch_stats"]))
    params = {k: np.asarray(v, np.float64) for k, v in params.items()}
    stats = {k: np.asarray(v, np.float64) for k, v in stats.items()}
    factors = []
    for path, (m, v) in moments.items():
        scale, bias = params[path + ("scale",)], params[path + ("bias",)]
        mean, var = stats[path + ("mean",)], stats[path + ("var",)]
        old = scale / np.sqrt(var + eps)
        params[path + ("scale",)] = old * np.sqrt(v + eps)
        params[path + ("bias",)] = bias + (m - mean) * old
        stats[path + ("mean",)], stats[path + ("var",)] = m, v
        factors.append(np.sqrt((v + eps) / (var + eps)))
    as32 = lambda flat: traverse_util.unflatten_dict(  # noqa: E731
        {k: np.asarray(v, np.float32) for k, v in flat.items()})
    new = dict(to_plain_dicts(variables), params=as32(params), batch_stats=as32(stats))
    factors = np.concatenate(factors) if factors else np.ones(1)
    summary = {"layers": len(moments), "images": int(sum(len(b) for b in images)),
               "scale_factor_median": float(np.median(factors)),
               "scale_factor_min": float(factors.min()), "scale_factor_max": float(factors.max())}
    return new, summary
