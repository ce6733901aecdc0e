"""Export a trained model to a TensorFlow SavedModel, TFLite files for phones, and ONNX.

The command is ``asmnet-export`` (:mod:`asmnet_jax.cli.export`).

The route is JAX -> ``jax2tf.convert`` (native serialization: the network travels as a StableHLO
module inside one ``XlaCallModule`` TF op) -> ``tf.saved_model.save`` and
``tf.lite.TFLiteConverter.from_concrete_functions``. The TFLite converter lowers the StableHLO to
builtin TFLite ops (CONV_2D, DEPTHWISE_CONV_2D, ADD, MUL, SUM, CONCATENATION, FULLY_CONNECTED; the
BatchNorms are folded into the convolutions), so the ``.tflite`` files run with the plain TFLite /
LiteRT runtime: the converter is restricted to ``TFLITE_BUILTINS`` (no ``SELECT_TF_OPS``, no Flex
delegate) and :func:`tflite_op_names` checks the result. No converter flags beyond that are needed.

Two settings matter for the conversion:

* the depthwise convolutions use ``depthwise_impl="xla"`` (the native grouped convolution), which
  the converter turns into ``DEPTHWISE_CONV_2D``; the CPU default ``"auto"`` is a shift-add form
  chosen per platform by ``lax.platform_dependent``, which has no such one-op equivalent;
* the SavedModel is lowered for the ``cpu``, ``cuda`` and ``tpu`` platforms, so that TensorFlow
  can serve it on any of them (tested on CPU only); the TFLite model is lowered for ``cpu``.

The serving function (SavedModel signature ``serving_default``, and the TFLite signature of the
same name) takes ``images``: float32 RGB (B, S, S, 3) in [0, 1], S = the model's input size, a face
crop made as in training (a square box around the face widened by ``margin`` of its side on each
side). It returns ``landmarks`` (B, 2n) in model coordinates (interleaved x, y; ``(x_px + 0.5) / S -
0.5``, see :mod:`asmnet_jax.landmarks`) and ``pose`` (B, 3) yaw, pitch, roll in radians. The
SavedModel takes any batch; a TFLite file has a fixed batch (``--batch-size``, default 1).
``export.json`` beside the outputs says all this for an app.

The ONNX model (``model.onnx``, opset :data:`ONNX_OPSET`) is converted by ``tf2onnx`` from the
float32 TFLite model (builtin ops map one to one to ONNX ``Conv``, ``MatMul``, ``Gemm``, ``Clip``,
``Add``, ``Mul``, ``ReduceSum``, ``Concat``, ``Transpose``), not from the SavedModel: tf2onnx has no
handler for the ``XlaCallModule`` op that carries the jax2tf network, and ``jax2onnx`` (0.17) pins
``orbax-checkpoint<0.11.37`` against this package's ``>=0.12``. Its input ``images`` is, as the
SavedModel's, float32 RGB NHWC (B, S, S, 3) in [0, 1] (not uint8), its outputs ``landmarks`` (B, 2n)
and ``pose`` (B, 3) as above; its batch dimension is symbolic (``batch``: any batch, checked by
running the verification images as one batch). It is written when ``tf2onnx``, ``onnx`` and
``onnxruntime`` are installed (the ``export`` extra), skipped with a one-line notice otherwise.

Written files, in ``--out DIR``::

    DIR/saved_model/        TF SavedModel, batch polymorphic
    DIR/model.tflite        float32 TFLite, batch fixed
    DIR/model_fp16.tflite   float16 weights (with --float16; computes in float32 on CPU)
    DIR/model.onnx          float32 ONNX, any batch (unless --no-onnx or ONNX libraries missing)
    DIR/export.json         inputs, outputs, conventions, model, verification, latency

Each export is verified on random images against the JAX model (the loaded one, evaluated with
``jax.jit``): the max absolute difference per output must be at most :data:`FLOAT32_TOLERANCE`
(SavedModel and float32 TFLite), :data:`ONNX_TOLERANCE` (ONNX, run with ONNX Runtime) or
:data:`FLOAT16_TOLERANCE` (float16 TFLite), else the command exits 1. Latencies are medians of
``--latency-runs`` calls (after warm-up) at batch ``--batch-size`` on this machine's CPU: TFLite
``invoke`` with ``--threads`` interpreter threads, XNNPACK enabled as in the default runtime; ONNX
Runtime ``run`` (CPU provider) with ``--threads`` intra-op threads; and, for comparison, the JAX
model as loaded (``jax.jit``, XLA's CPU thread pool: ``--threads`` does not apply).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
import warnings
from typing import Any, Callable, Dict, List, Optional, Tuple

import numpy as np

from asmnet_jax.errors import AsmnetError
from asmnet_jax.files import atomic_open

#: Max abs difference allowed between the JAX model and the SavedModel / float32 TFLite outputs.
FLOAT32_TOLERANCE = 1e-3
#: Max abs difference allowed for the float16-weight TFLite model (landmarks in model units, where
#: 1 is the crop side, and pose in radians). A sanity bound that catches a broken conversion (errors
#: of 0.1 and more), not an accuracy guarantee: rounding the weights to float16 (relative error
#: <= 2**-11) moved the outputs of a (briefly) trained 96 px ASMNet by 5e-4 (~0.1 px at 224 px,
#: 0.03 degrees), but those of the randomly perturbed test model by 1e-2. Measure the float16
#: model's NME on a validation set before shipping it.
FLOAT16_TOLERANCE = 2e-2
#: Max abs difference allowed between the JAX model and the ONNX model run by ONNX Runtime.
ONNX_TOLERANCE = 1e-4
#: ONNX opset of ``model.onnx`` (ONNX Runtime >= 1.13 runs it).
ONNX_OPSET = 17
ONNX_FILE = "model.onnx"
SIGNATURE = "serving_default"
INPUT_NAME = "images"
OUTPUT_NAMES = ("landmarks", "pose")
SAVED_MODEL_DIR = "saved_model"
TFLITE_FILE = "model.tflite"
TFLITE_FP16_FILE = "model_fp16.tflite"
EXPORT_JSON = "export.json"
FORMAT = "asmnet_jax.export/1"
#: Platforms the SavedModel's StableHLO is lowered for (one XlaCallModule serves each of them).
SAVED_MODEL_PLATFORMS = ("cpu", "cuda", "tpu")
TF_MISSING = ('TensorFlow is not installed; asmnet-export needs it: pip install -e ".[export]"')
#: The packages the ONNX export needs (import names).
ONNX_PACKAGES = ("tf2onnx", "onnx", "onnxruntime")
ONNX_MISSING = ('the ONNX export needs tf2onnx, onnx and onnxruntime: pip install -e ".[export]"')


class ExportError(AsmnetError):
    """A problem the user can fix (missing TensorFlow, bad arguments); printed without traceback."""


def import_tensorflow():
    """``(tf, jax2tf)``, or :class:`ExportError` saying how to install TensorFlow."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    try:
        import tensorflow as tf
        from jax.experimental import jax2tf
    except ImportError as error:
        raise ExportError(f"{TF_MISSING} ({error})") from None
    return tf, jax2tf


def onnx_missing() -> List[str]:
    """The ONNX export's packages (:data:`ONNX_PACKAGES`) that cannot be imported."""
    import importlib

    missing = []
    for name in ONNX_PACKAGES:
        try:
            importlib.import_module(name)
        except ImportError:
            missing.append(name)
    return missing


def import_onnx():
    """``(tf2onnx, onnx, onnxruntime)``, or :class:`ExportError` saying how to install them."""
    missing = onnx_missing()
    if missing:
        raise ExportError(f"{ONNX_MISSING} (missing: {', '.join(missing)})")
    import onnx
    import onnxruntime
    import tf2onnx
    return tf2onnx, onnx, onnxruntime


# ---------------------------------------------------------------------------------------------
# The serving function and the conversions


def serving_function(loaded) -> Tuple[Callable[[Any, Any], Dict[str, Any]], Dict[str, Any]]:
    """The JAX function that is exported, for a :class:`asmnet_jax.inference.LoadedModel`.

    Returns ``(serve, variables)``: ``serve(variables, images) -> {"landmarks": (B, 2n), "pose":
    (B, 3)}`` maps float32 RGB images (B, S, S, 3) in [0, 1] to float32 outputs in model units;
    ``variables`` is ``{'params': ..., 'batch_stats': ...}`` of float32 NumPy arrays. The module is
    the loaded one with the native depthwise convolution (``depthwise_impl="xla"``) and float32
    compute.
    """
    import jax.numpy as jnp

    model = loaded.model.clone(depthwise_impl="xla", dtype=jnp.float32)
    variables = {key: value for key, value in loaded.variables.items()
                 if key in ("params", "batch_stats")}

    def serve(variables, images):
        landmarks, pose = model.apply(variables, images, train=False)
        return {"landmarks": landmarks.astype(jnp.float32), "pose": pose.astype(jnp.float32)}

    return serve, variables


def tf_serving_module(loaded, batch: Optional[int] = None, platforms=SAVED_MODEL_PLATFORMS,
                      weights: str = "variables"):
    """A ``tf.Module`` whose ``serve`` is the ``tf.function`` of :func:`serving_function`.

    Args:
      loaded: the model.
      batch: fixed batch size, or None for any batch (a symbolic batch dimension in jax2tf).
      platforms: platforms the StableHLO module is lowered for.
      weights: ``"variables"``: the weights are ``tf.Variable``s held by the module (a SavedModel
        stores them once, in ``variables/``); ``"constants"``: they are constants inside the
        StableHLO module (what the TFLite converter wants: it converts this form about five times
        faster than one with variables to freeze).

    Returns:
      The module; ``module.serve(images)`` takes float32 (batch, S, S, 3) and returns the output
      dict.
    """
    if weights not in ("variables", "constants"):
        raise ValueError(f"weights must be 'variables' or 'constants', got {weights!r}")
    tf, jax2tf = import_tensorflow()
    serve, variables = serving_function(loaded)
    images_shape = None if batch else "(b, ...)"
    spec = tf.TensorSpec((batch, loaded.input_size, loaded.input_size, 3), tf.float32,
                         name=INPUT_NAME)
    module = tf.Module()
    if weights == "variables":
        converted = jax2tf.convert(serve, polymorphic_shapes=[None, images_shape],
                                   with_gradient=False,
                                   native_serialization_platforms=tuple(platforms))
        module.model_variables = tf.nest.map_structure(
            lambda value: tf.Variable(value, trainable=False), variables)
        function = lambda images: converted(module.model_variables, images)  # noqa: E731
    else:
        function = jax2tf.convert(lambda images: serve(variables, images),
                                  polymorphic_shapes=[images_shape], with_gradient=False,
                                  native_serialization_platforms=tuple(platforms))
    module.serve = tf.function(function, autograph=False, input_signature=[spec])
    return module


def save_saved_model(loaded, directory: str) -> str:
    """Writes the batch-polymorphic SavedModel (signature ``serving_default``) to ``directory``."""
    tf, _ = import_tensorflow()
    module = tf_serving_module(loaded, batch=None)
    tf.saved_model.save(module, directory,
                        signatures={SIGNATURE: module.serve.get_concrete_function()})
    return directory


def convert_tflite(loaded, batch: int = 1, float16: bool = False, module=None) -> bytes:
    """The model as a TFLite flatbuffer with builtin ops only.

    Args:
      loaded: the model.
      batch: the fixed batch size of the TFLite input (B, S, S, 3).
      float16: store the weights as float16 (half the size; the CPU runtime dequantizes them once
        and computes in float32, GPU delegates may compute in float16).
      module: a module from :func:`tflite_module` for this batch, to convert the same lowering
        more than once (float32 and float16); made when None.

    Returns:
      The ``.tflite`` bytes, with signature ``serving_default`` (``images`` -> ``landmarks``,
      ``pose``).
    """
    tf, _ = import_tensorflow()
    if batch < 1:
        raise ExportError(f"batch must be >= 1, got {batch}")
    module = module if module is not None else tflite_module(loaded, batch)
    # Giving the converter the module (not only the function) gives the model its signature.
    converter = tf.lite.TFLiteConverter.from_concrete_functions(
        [module.serve.get_concrete_function()], module)
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    if float16:
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.target_spec.supported_types = [tf.float16]
    return converter.convert()


def tflite_module(loaded, batch: int = 1):
    """The serving module the TFLite files are converted from: fixed batch, CPU, constant weights."""
    return tf_serving_module(loaded, batch=batch, platforms=("cpu",), weights="constants")


def tflite_op_names(model_bytes: bytes) -> List[str]:
    """Sorted distinct operator names of a TFLite flatbuffer, read from the file itself.

    Builtin operators appear by their schema name (``CONV_2D``); custom operators as
    ``CUSTOM:<code>`` (TF ops run by the Flex delegate are ``CUSTOM:Flex<Op>``).
    """
    from tensorflow.lite.python import schema_py_generated as schema

    names = {value: key for key, value in vars(schema.BuiltinOperator).items()
             if not key.startswith("_")}
    model = schema.Model.GetRootAs(model_bytes, 0)
    ops = set()
    for i in range(model.OperatorCodesLength()):
        code = model.OperatorCodes(i)
        # Codes above 127 only fit the newer field; the deprecated one holds min(code, 127).
        builtin = max(code.BuiltinCode(), code.DeprecatedBuiltinCode())
        if builtin == schema.BuiltinOperator.CUSTOM:
            custom = code.CustomCode()
            ops.add("CUSTOM:" + (custom.decode() if custom else "?"))
        else:
            ops.add(names.get(builtin, f"BUILTIN_{builtin}"))
    return sorted(ops)


def non_builtin_ops(op_names) -> List[str]:
    """The custom (Flex / SELECT_TF_OPS or other) operators among ``op_names``."""
    return [name for name in op_names if name.startswith("CUSTOM")]


def convert_onnx(tflite_path: str, path: str, opset: int = ONNX_OPSET) -> int:
    """Converts a float32 TFLite model of :func:`convert_tflite` to ONNX at ``path``.

    ``tf2onnx.convert.from_tflite`` does the conversion; the graph's input and outputs are then
    renamed after the TFLite signature (``images`` -> ``landmarks``, ``pose``) and the batch
    dimension made symbolic (``batch``): the network has no op that depends on the batch (no
    reshape; the heads read the pooled (B, C) features). The ONNX input is float32 RGB NHWC
    (B, S, S, 3) in [0, 1], as the SavedModel's and the TFLite model's.

    Returns:
      The size of the written file in bytes.
    """
    tf2onnx, onnx, _ = import_onnx()
    interpreter = make_interpreter(tflite_path)
    runner = interpreter.get_signature_runner(SIGNATURE)
    rename = {detail["name"]: name for name, detail in runner.get_input_details().items()}
    rename.update({detail["name"]: name for name, detail in runner.get_output_details().items()})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model, _ = tf2onnx.convert.from_tflite(tflite_path, opset=opset)
    graph = model.graph
    found = {value.name for value in list(graph.input) + list(graph.output)}
    if found != set(rename):
        raise ExportError(f"tf2onnx's graph has inputs and outputs {sorted(found)}, expected the "
                          f"TFLite signature's {sorted(rename)}")
    for node in graph.node:
        node.input[:] = [rename.get(name, name) for name in node.input]
        node.output[:] = [rename.get(name, name) for name in node.output]
    for value in list(graph.input) + list(graph.output):
        value.name = rename[value.name]
        value.type.tensor_type.shape.dim[0].dim_param = "batch"
    model.graph.doc_string = ("ASMNet (asmnet_jax.export): images float32 RGB NHWC in [0, 1] -> "
                              "landmarks (batch, 2n) model coordinates, pose (batch, 3) radians")
    onnx.checker.check_model(model)
    data = model.SerializeToString()
    with atomic_open(path, "wb") as f:
        f.write(data)
    return len(data)


# ---------------------------------------------------------------------------------------------
# Running the exports


def make_interpreter(model_path: str, threads: int = 1):
    """A TFLite interpreter of ``model_path`` with tensors allocated.

    Uses LiteRT (``ai_edge_litert``) when installed, else ``tf.lite.Interpreter`` (deprecated in
    TensorFlow 2.20+ but still shipped with 2.21), with the default XNNPACK CPU delegate.
    """
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:
        tf, _ = import_tensorflow()
        Interpreter = tf.lite.Interpreter
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tf.lite.Interpreter's deprecation notice
        interpreter = Interpreter(model_path=model_path, num_threads=threads)
    interpreter.allocate_tensors()
    return interpreter


def run_tflite(interpreter, images: np.ndarray) -> Dict[str, np.ndarray]:
    """Runs the TFLite model on float32 images (N, S, S, 3) in chunks of its fixed batch.

    Returns ``{"landmarks": (N, 2n), "pose": (N, 3)}``; N must be a multiple of the batch.
    """
    runner = interpreter.get_signature_runner(SIGNATURE)
    batch = int(interpreter.get_input_details()[0]["shape"][0])
    if len(images) % batch:
        raise ValueError(f"{len(images)} images do not split into batches of {batch}")
    outputs = [runner(**{INPUT_NAME: np.ascontiguousarray(images[i:i + batch], np.float32)})
               for i in range(0, len(images), batch)]
    return {name: np.concatenate([out[name] for out in outputs]) for name in OUTPUT_NAMES}


def run_saved_model(directory: str, images: np.ndarray) -> Dict[str, np.ndarray]:
    """Runs the SavedModel's ``serving_default`` on float32 images (N, S, S, 3) as one batch."""
    tf, _ = import_tensorflow()
    serve = tf.saved_model.load(directory).signatures[SIGNATURE]
    out = serve(**{INPUT_NAME: tf.constant(images, tf.float32)})
    return {name: out[name].numpy() for name in OUTPUT_NAMES}


def make_onnx_session(path: str, threads: int = 1):
    """An ONNX Runtime CPU session of ``path`` with ``threads`` intra-op threads."""
    _, _, ort = import_onnx()
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    return ort.InferenceSession(path, sess_options=options, providers=["CPUExecutionProvider"])


def run_onnx(session, images: np.ndarray) -> Dict[str, np.ndarray]:
    """Runs the ONNX model on float32 images (N, S, S, 3) as one batch; returns the output dict."""
    outputs = session.run(list(OUTPUT_NAMES),
                          {INPUT_NAME: np.ascontiguousarray(images, np.float32)})
    return dict(zip(OUTPUT_NAMES, outputs))


def _latency(call: Callable[[], Any], runs: int, warmup: int) -> Dict[str, float]:
    if runs < 1:
        raise ExportError(f"latency runs must be >= 1, got {runs}")
    times = []
    for i in range(warmup + runs):
        start = time.perf_counter()
        call()
        if i >= warmup:
            times.append((time.perf_counter() - start) * 1e3)
    times = np.asarray(times)
    return {"median": float(np.median(times)), "min": float(times.min()),
            "p90": float(np.percentile(times, 90)), "runs": int(runs)}


def onnx_latency_ms(session, batch: int = 1, runs: int = 50, warmup: int = 5, seed: int = 0
                    ) -> Dict[str, float]:
    """Latency of one ONNX Runtime ``run`` (both outputs) on a random batch; as
    :func:`tflite_latency_ms`."""
    shape = session.get_inputs()[0].shape
    image = np.random.default_rng(seed).random((batch, *shape[1:]), dtype=np.float32)
    return _latency(lambda: session.run(list(OUTPUT_NAMES), {INPUT_NAME: image}), runs, warmup)


def jax_latency_ms(loaded, batch: int = 1, runs: int = 50, warmup: int = 5, seed: int = 0
                   ) -> Dict[str, float]:
    """Latency of the JAX model as loaded (``jax.jit`` of ``model.apply``, outputs copied to
    NumPy) on a random batch; as :func:`tflite_latency_ms`. Runs on JAX's default device."""
    import jax

    apply = jax.jit(lambda variables, x: loaded.model.apply(variables, x, train=False))
    size = loaded.input_size
    image = jax.device_put(np.random.default_rng(seed).random((batch, size, size, 3),
                                                              dtype=np.float32))
    variables = jax.device_put(loaded.variables)
    return _latency(lambda: jax.tree_util.tree_map(np.asarray, apply(variables, image)),
                    runs, warmup)


def random_images(count: int, size: int, seed: int = 0) -> np.ndarray:
    """float32 (count, size, size, 3) in [0, 1]: uniform noise with a random colour scale and
    offset per image, so that images differ in their means (pure noise images all look alike to a
    network that pools globally, and would hide errors in how the input is read)."""
    rng = np.random.default_rng(seed)
    scale = rng.uniform(0.1, 1.0, (count, 1, 1, 3)).astype(np.float32)
    offset = rng.uniform(0.0, 1.0, (count, 1, 1, 3)).astype(np.float32) * (1.0 - scale)
    return rng.random((count, size, size, 3), dtype=np.float32) * scale + offset


def jax_outputs(loaded, images: np.ndarray) -> Dict[str, np.ndarray]:
    """The JAX model as loaded (``jax.jit`` of ``model.apply``) on float32 images (N, S, S, 3)."""
    import jax

    apply = jax.jit(lambda variables, x: loaded.model.apply(variables, x, train=False))
    landmarks, pose = apply(loaded.variables, images)
    return {"landmarks": np.asarray(landmarks, np.float32), "pose": np.asarray(pose, np.float32)}


def max_differences(outputs: Dict[str, np.ndarray], reference: Dict[str, np.ndarray]
                    ) -> Dict[str, float]:
    """Max abs difference per output name; raises if shapes differ."""
    diffs = {}
    for name in OUTPUT_NAMES:
        if np.shape(outputs[name]) != np.shape(reference[name]):
            raise ValueError(f"output {name!r} has shape {np.shape(outputs[name])}, expected "
                             f"{np.shape(reference[name])}")
        diffs[name] = float(np.max(np.abs(outputs[name] - reference[name])))
    return diffs


def tflite_latency_ms(interpreter, runs: int = 50, warmup: int = 5, seed: int = 0
                      ) -> Dict[str, float]:
    """Latency of one ``set_tensor`` + ``invoke`` + output read at the model's fixed batch.

    Returns ``{"median": ms, "min": ms, "p90": ms, "runs": runs}`` over ``runs`` timed calls after
    ``warmup`` untimed ones, on one random input.
    """
    detail = interpreter.get_input_details()[0]
    outputs = [d["index"] for d in interpreter.get_output_details()]
    image = np.random.default_rng(seed).random(detail["shape"], dtype=np.float32)

    def call():
        interpreter.set_tensor(detail["index"], image)
        interpreter.invoke()
        for index in outputs:
            interpreter.get_tensor(index)

    return _latency(call, runs, warmup)


# ---------------------------------------------------------------------------------------------
# The whole export


def describe_export(loaded, files: Dict[str, Any]) -> Dict[str, Any]:
    """The ``export.json`` content (without verification and latency) for a phone app."""
    import jax
    import tensorflow as tf

    from asmnet_jax.models import count_parameters

    size, n = loaded.input_size, loaded.num_landmarks
    return {
        "format": FORMAT,
        "model": {"name": loaded.model_name, "num_landmarks": n,
                  "parameters": count_parameters(loaded.variables)["total"],
                  "source": loaded.path, "step": loaded.step},
        "input_size": size,
        "margin": loaded.margin,
        "signature": SIGNATURE,
        "inputs": {INPUT_NAME: {
            "dtype": "float32", "shape": ["batch", size, size, 3], "layout": "NHWC",
            "color": "RGB", "range": [0.0, 1.0], "scaling": "uint8 pixel / 255",
            "crop": (f"a square box around the face (its longer side), widened by margin="
                     f"{loaded.margin} of that side on each side, resampled to {size} x {size}; "
                     "outside the image is black (0)")}},
        "outputs": {
            "landmarks": {
                "dtype": "float32", "shape": ["batch", 2 * n],
                "layout": f"interleaved [x0, y0, x1, y1, ...] for {n} points",
                "units": "model coordinates: x = (x_px + 0.5) / S - 0.5, y = (y_px + 0.5) / S - "
                         "0.5, with S the input size and (x_px, y_px) 0-based pixel centres of "
                         "the crop; the crop spans [-0.5, 0.5], x right, y down",
                "to_crop_pixels": "x_px = (x + 0.5) * S - 0.5, y_px = (y + 0.5) * S - 0.5"},
            "pose": {"dtype": "float32", "shape": ["batch", 3], "order": ["yaw", "pitch", "roll"],
                     "units": "radians"}},
        "files": files,
        "tolerances": {"float32": FLOAT32_TOLERANCE, "float16": FLOAT16_TOLERANCE,
                       "onnx": ONNX_TOLERANCE},
        "versions": {"jax": jax.__version__, "tensorflow": tf.__version__,
                     **_onnx_versions(files)},
    }


def _onnx_versions(files: Dict[str, Any]) -> Dict[str, str]:
    if "onnx" not in files:
        return {}
    tf2onnx, onnx, ort = import_onnx()
    return {"tf2onnx": tf2onnx.__version__, "onnx": onnx.__version__,
            "onnxruntime": ort.__version__}


def _onnx_wanted(onnx: Optional[bool], log) -> Tuple[bool, Optional[str]]:
    """(whether to write the ONNX model, why not when skipped) for ``export``'s ``onnx``."""
    if onnx is None:
        missing = onnx_missing()
        if missing:
            reason = f"{ONNX_MISSING} (missing: {', '.join(missing)})"
            log(f"skipping {ONNX_FILE}: {reason}")
            return False, reason
        return True, None
    if onnx:
        import_onnx()
        return True, None
    return False, "--no-onnx"


def _fresh_output_dir(out_dir) -> str:
    """``out_dir`` made absolute and created, with this module's earlier outputs removed."""
    out_dir = os.path.abspath(os.fspath(out_dir))
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise ExportError(f"{out_dir}: exists and is not a directory")
    os.makedirs(out_dir, exist_ok=True)
    for stale in (SAVED_MODEL_DIR, TFLITE_FILE, TFLITE_FP16_FILE, ONNX_FILE, EXPORT_JSON):
        path = os.path.join(out_dir, stale)
        if os.path.isdir(path):
            shutil.rmtree(path)
        elif os.path.exists(path):
            os.remove(path)
    return out_dir


def _write_onnx(tflite_fp32: str, out_dir: str, images, reference, threads: int, batch: int,
                latency_runs: int, log):
    """Converts the float32 TFLite model to ``out_dir/model.onnx`` and checks it against the JAX
    ``reference`` on ``images``: (file entry, max differences, latency or None)."""
    log(f"writing {ONNX_FILE} (tf2onnx from the float32 TFLite model, opset {ONNX_OPSET})")
    path = os.path.join(out_dir, ONNX_FILE)
    size_bytes = convert_onnx(tflite_fp32, path)
    entry = {"path": ONNX_FILE, "batch": "any", "bytes": size_bytes, "weights": "float32",
             "opset": ONNX_OPSET, "converted_from": "float32 TFLite model (tf2onnx)"}
    session = make_onnx_session(path, threads)
    diffs = max_differences(run_onnx(session, images), reference)
    latency = None
    if latency_runs > 0:
        log(f"timing {ONNX_FILE} (ONNX Runtime): {latency_runs} runs, {threads} thread(s)")
        latency = onnx_latency_ms(session, batch, latency_runs)
        latency.update({"batch": batch, "threads": threads, "file": ONNX_FILE})
    return entry, diffs, latency


def _write_tflite(loaded, directory: str, keep: bool, float16: bool, for_onnx: bool, batch: int,
                  images, reference, threads: int, latency_runs: int, log, files, diffs,
                  tolerance, ops, latencies) -> Optional[str]:
    """Writes the TFLite model(s) into ``directory`` and, when they are kept (``keep``: not only
    made for the ONNX conversion), checks and times them into the given report dicts; returns
    the float32 file's path (None when none was made)."""
    variants = [("tflite", TFLITE_FILE, False)] if keep or for_onnx else []
    if keep and float16:
        variants.append(("tflite_fp16", TFLITE_FP16_FILE, True))
    module = tflite_module(loaded, batch) if variants else None
    fp32_path = None
    for key, name, half in variants:
        log(f"writing {name} ({'float16' if half else 'float32'} weights, batch {batch})"
            + ("" if keep else " for the ONNX conversion only"))
        model_bytes = convert_tflite(loaded, batch=batch, float16=half, module=module)
        path = os.path.join(directory, name)
        with open(path, "wb") as f:
            f.write(model_bytes)
        if not half:
            fp32_path = path
        if not keep:
            continue
        ops[key] = tflite_op_names(model_bytes)
        files[key] = {"path": name, "batch": batch, "bytes": len(model_bytes),
                      "weights": "float16" if half else "float32", "ops": ops[key]}
        interpreter = make_interpreter(path, threads)
        diffs[key] = max_differences(run_tflite(interpreter, images), reference)
        tolerance[key] = FLOAT16_TOLERANCE if half else FLOAT32_TOLERANCE
        if not half and latency_runs > 0:
            log(f"timing {name}: {latency_runs} runs, {threads} thread(s)")
            latencies["tflite"] = tflite_latency_ms(interpreter, latency_runs)
            latencies["tflite"].update({"batch": batch, "threads": threads, "file": name})
    return fp32_path


def export(loaded, out_dir: str, float16: bool = False, tflite: bool = True, batch: int = 1,
           verify_images: int = 4, latency_runs: int = 50, threads: int = 1, seed: int = 0,
           onnx: Optional[bool] = None,
           log: Callable[[str], None] = lambda message: None) -> Dict[str, Any]:
    """Writes and verifies the exports of ``loaded`` in ``out_dir``; returns the report.

    Args:
      loaded: a :class:`asmnet_jax.inference.LoadedModel`.
      out_dir: output directory (created; earlier outputs of this function in it are replaced).
      float16: also write ``model_fp16.tflite`` with float16 weights.
      tflite: write the TFLite file(s).
      batch: fixed batch of the TFLite models; the batch the latencies are measured at.
      verify_images: random images (rounded up to a multiple of ``batch``) compared to JAX.
      latency_runs: timed runs of the JAX model, the float32 TFLite model and the ONNX model
        (0: no latency measurement).
      threads: TFLite interpreter and ONNX Runtime intra-op threads, for verification and latency.
      seed: seed of the random verification images.
      onnx: write ``model.onnx`` (converted from the float32 TFLite model, made in a temporary
        directory when ``tflite`` is False): True requires the ONNX packages (else
        :class:`ExportError`), None writes it when they are installed and logs a one-line notice
        when not, False skips it.
      log: receives progress lines.

    Returns:
      ``{"files": {...}, "max_abs_diff": {export: {output: diff}}, "tolerance": {export: bound},
      "ok": bool, "ops": {tflite export: [op names]}, "latency_ms": {...} (float32 TFLite) or
      None, "latencies_ms": {"jax"|"tflite"|"onnx": {...}}, "onnx_skipped": reason or None,
      "export_json": path}``.
    """
    tf, _ = import_tensorflow()
    if batch < 1:
        raise ExportError(f"--batch-size must be >= 1, got {batch}")
    if verify_images < 1:
        raise ExportError(f"the number of verification images must be >= 1, got {verify_images}")
    if threads < 1:
        raise ExportError(f"--threads must be >= 1, got {threads}")
    onnx, onnx_skipped = _onnx_wanted(onnx, log)
    out_dir = _fresh_output_dir(out_dir)

    size = loaded.input_size
    count = -(-verify_images // batch) * batch
    images = random_images(count, size, seed)
    reference = jax_outputs(loaded, images)

    files: Dict[str, Any] = {}
    diffs: Dict[str, Dict[str, float]] = {}
    tolerance: Dict[str, float] = {}
    ops: Dict[str, List[str]] = {}

    log(f"writing {SAVED_MODEL_DIR}/ (jax2tf, batch polymorphic)")
    saved_model = os.path.join(out_dir, SAVED_MODEL_DIR)
    save_saved_model(loaded, saved_model)
    files["saved_model"] = {"path": SAVED_MODEL_DIR, "batch": "any",
                            "bytes": _tree_bytes(saved_model),
                            "platforms": list(SAVED_MODEL_PLATFORMS)}
    diffs["saved_model"] = max_differences(run_saved_model(saved_model, images), reference)
    tolerance["saved_model"] = FLOAT32_TOLERANCE

    latencies: Dict[str, Dict[str, Any]] = {}
    if latency_runs > 0:
        log(f"timing the JAX model: {latency_runs} runs, batch {batch}")
        latencies["jax"] = jax_latency_ms(loaded, batch, latency_runs)
        latencies["jax"].update({"batch": batch, "threads": None,
                                 "backend": _jax_backend()})

    with tempfile.TemporaryDirectory(prefix="asmnet_export_") as scratch:
        tflite_fp32 = _write_tflite(loaded, out_dir if tflite else scratch, tflite, float16,
                                    bool(onnx), batch, images, reference, threads,
                                    latency_runs, log, files, diffs, tolerance, ops, latencies)

        if onnx:
            files["onnx"], diffs["onnx"], onnx_latency = _write_onnx(
                tflite_fp32, out_dir, images, reference, threads, batch, latency_runs, log)
            tolerance["onnx"] = ONNX_TOLERANCE
            if onnx_latency is not None:
                latencies["onnx"] = onnx_latency
    latency = latencies.get("tflite")

    custom = {key: non_builtin_ops(names) for key, names in ops.items()
              if non_builtin_ops(names)}
    ok = not custom and all(diff <= tolerance[key]
                            for key, per_output in diffs.items() for diff in per_output.values())
    description = describe_export(loaded, files)
    description["verification"] = {"images": count, "seed": seed, "max_abs_diff": diffs,
                                   "tolerance": tolerance, "ok": ok}
    description["latency_ms"] = latency
    description["latencies_ms"] = latencies
    export_json = os.path.join(out_dir, EXPORT_JSON)
    with atomic_open(export_json) as f:
        json.dump(description, f, indent=2)
        f.write("\n")
    return {"files": files, "max_abs_diff": diffs, "tolerance": tolerance, "ok": ok,
            "ops": ops, "non_builtin_ops": custom, "latency_ms": latency,
            "latencies_ms": latencies, "onnx_skipped": onnx_skipped, "export_json": export_json}


def _jax_backend() -> str:
    import jax

    return jax.default_backend()


def _tree_bytes(directory: str) -> int:
    return sum(os.path.getsize(os.path.join(root, name))
               for root, _, names in os.walk(directory) for name in names)


def format_table(report: Dict[str, Any]) -> str:
    """One line per export: file, size, max abs differences, bound, ops check."""
    rows = [("export", "bytes", "max|d| landmarks", "max|d| pose", "bound", "check")]
    for key, info in report["files"].items():
        diff = report["max_abs_diff"].get(key, {})
        bound = report["tolerance"][key]
        good = all(value <= bound for value in diff.values())
        good = good and key not in report["non_builtin_ops"]
        rows.append((info["path"], str(info["bytes"]), f"{diff.get('landmarks', float('nan')):.2e}",
                     f"{diff.get('pose', float('nan')):.2e}", f"{bound:.0e}",
                     "ok" if good else "FAIL"))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip()
             for row in rows]
    latencies = report.get("latencies_ms") or {}
    if report.get("latency_ms") and "tflite" not in latencies:
        latencies = {**latencies, "tflite": report["latency_ms"]}
    for key, label in (("jax", "JAX latency"), ("tflite", "TFLite latency"),
                       ("onnx", "ONNX Runtime latency")):
        latency = latencies.get(key)
        if not latency:
            continue
        where = (f"jax.jit on {latency.get('backend', '?')}" if key == "jax" else
                 f"{latency['file']}, {latency['threads']} thread(s)")
        lines.append(f"{label} ({where}, batch {latency['batch']}, {latency['runs']} runs): "
                     f"median {latency['median']:.2f} ms, min {latency['min']:.2f} ms, "
                     f"p90 {latency['p90']:.2f} ms")
    if report.get("onnx_skipped") and report["onnx_skipped"] != "--no-onnx":
        lines.append(f"{ONNX_FILE} not written: {report['onnx_skipped']}")
    for key, names in report["non_builtin_ops"].items():
        lines.append(f"{report['files'][key]['path']}: non-builtin ops {names} "
                     "(phones without the Flex delegate cannot run them)")
    return "\n".join(lines)
