"""The benchmark scripts (experiments.bench_train, bench_gpu, bench_loop, xplane_ops) run and
report what they say.

Each script runs at tiny sizes (batch 2, 64 x 64, one timed step) in a subprocess, as a user would
run it (``python -m experiments.NAME`` from the repository root), and its last output line must be
JSON with the documented keys. Timings at these sizes mean
nothing; only the plumbing, the parameter counts and the import hygiene are checked. The numbers
themselves come from full-size runs on an idle machine (CPU) and a lent GPU.
"""

import importlib
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--batch", "2", "--size", "64", "--steps", "1", "--warmup", "1"]
#: docs/method.md section 1.4: Keras count_params() of ASMNet with 68 points (BN statistics
#: included).
ASMNET68_TOTAL, ASMNET68_TRAINABLE = 1_439_507, 1_412_435

TRAIN_KEYS = ("train_img_s_jax", "train_img_s_jax_noasm", "train_img_s_tf",
              "train_ratio_jax_over_tf", "train_ratio_jax_noasm_over_tf", "infer_img_s_jax",
              "infer_img_s_tf", "infer_ratio_jax_over_tf", "latency_ms_jax", "latency_ms_tf",
              "latency_ratio_jax_over_tf", "asm_overhead", "params_jax", "params_tf",
              "params_equal", "platform", "cpu_count", "threads", "jax_version", "date", "busy")


def _has(module):
    return importlib.util.find_spec(module) is not None


def run_script(script, *args, timeout=1200):
    """Runs ``python -m experiments.<script>`` with ``args`` from the repository root; returns
    the JSON of its last output line."""
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", JAX_PLATFORMS="cpu", OUT="")
    proc = subprocess.run([sys.executable, "-m", f"experiments.{script}", *args], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{script} failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    lines = proc.stdout.strip().splitlines()
    assert lines, f"{script} printed nothing; stderr:\n{proc.stderr[-4000:]}"
    return json.loads(lines[-1])


def _load(name):
    return importlib.import_module(f"experiments.{name}")


def _check_counts(counts):
    assert counts == {"trainable": ASMNET68_TRAINABLE,
                      "batch_stats": ASMNET68_TOTAL - ASMNET68_TRAINABLE, "total": ASMNET68_TOTAL}


def test_gpu_bench_imports_no_tensorflow():
    """bench_gpu runs where there is no TensorFlow: nothing it imports, the training setup
    (asmnet_jax.train) included, may import it; ml_collections only once the JAX side builds its
    run (the GPU machines get it as a carried wheel)."""
    code = ("import sys; import experiments.common, experiments.bench_gpu; "
            "experiments.bench_gpu.parse_args([]); "
            "print(sorted({m.split('.')[0] for m in sys.modules} "
            "& {'tensorflow', 'ml_collections', 'tf_keras', 'keras', 'torch'})); "
            "import asmnet_jax.train; "
            "print(sorted({m.split('.')[0] for m in sys.modules} "
            "& {'tensorflow', 'ml_collections', 'tf_keras', 'keras', 'torch'}))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                         check=True).stdout
    assert out.strip().splitlines() == ["[]", "['ml_collections']"]


def test_plausible_shapes_fit_a_shape_model():
    import numpy as np

    from asmnet_jax.asm import ShapeModel

    common = _load("common")
    shapes, poses = common.plausible_shapes(np.random.default_rng(0), 256, 68)
    assert shapes.shape == (256, 136) and poses.shape == (256, 3)
    assert np.all(np.abs(shapes) < 0.5)  # inside the crop
    model = ShapeModel.fit(shapes, 0.9)
    assert 2 <= model.num_components < 20  # a few modes (pose, scale, shift) explain most of it


@pytest.mark.skipif(not _has("torch"), reason="PyTorch is not installed")
def test_torch_asmnet_has_the_flax_parameter_counts():
    import jax

    from asmnet_jax.models import count_parameters, create_model

    bench_gpu = _load("bench_gpu")
    for num_landmarks in (68, 98):
        model = create_model("asmnet", num_landmarks)
        variables = jax.eval_shape(model.init, jax.random.key(0),
                                   jax.ShapeDtypeStruct((1, 64, 64, 3), "float32"))
        torch_counts = bench_gpu.torch_parameter_counts(bench_gpu.build_torch_model(num_landmarks))
        assert torch_counts == count_parameters(variables)
    _check_counts(bench_gpu.torch_parameter_counts(bench_gpu.build_torch_model(68)))


def test_bench_train_summary_ratios():
    """The parent's arithmetic on the children's results (no subprocess, no compilation)."""
    bench_train = _load("bench_train")
    args = bench_train.parse_args(["--threads", "2"])
    counts = {"trainable": 1, "batch_stats": 2, "total": 3}
    result = {"cpu_model": "test", "busy": False, "step_s_jax": 2.0, "step_s_jax_noasm": 1.5,
              "train_img_s_jax": 16.0, "train_img_s_jax_noasm": 32 / 1.5, "train_img_s_tf": 32.0,
              "infer_img_s_jax": 100.0, "infer_img_s_tf": 200.0, "latency_ms_jax": 30.0,
              "latency_ms_tf": 10.0, "params_jax": counts, "params_tf": dict(counts)}
    bench_train.summarise(args, result)
    assert result["train_ratio_jax_over_tf"] == pytest.approx(0.5)
    assert result["train_ratio_jax_noasm_over_tf"] == pytest.approx(2 / 3)
    assert result["infer_ratio_jax_over_tf"] == pytest.approx(0.5)
    assert result["latency_ratio_jax_over_tf"] == pytest.approx(3.0)
    assert result["asm_overhead"] == pytest.approx(0.25)
    assert result["params_equal"] is True


@pytest.mark.slow  # the script end to end (~80 s of compiling); its arithmetic is tested above
def test_bench_train_jax_side():
    result = run_script("bench_train", "--sides", "jax", *TINY)
    for key in TRAIN_KEYS:
        assert key in result, key
    assert result["train_img_s_jax"] > 0 and result["train_img_s_jax_noasm"] > 0
    assert result["infer_img_s_jax"] > 0 and result["latency_ms_jax"] > 0
    assert isinstance(result["asm_overhead"], float)
    assert result["train_img_s_tf"] is None and result["train_ratio_jax_over_tf"] is None
    assert result["asm_components"] >= 1
    _check_counts(result["params_jax"])


@pytest.mark.slow
def test_bench_train_tf_side():
    pytest.importorskip("tensorflow")
    pytest.importorskip("tf_keras")
    result = run_script("bench_train", "--sides", "tf", *TINY)
    for key in TRAIN_KEYS:
        assert key in result, key
    assert result["train_img_s_tf"] > 0 and result["infer_img_s_tf"] > 0
    assert result["latency_ms_tf"] > 0 and result["tf_auto_jit"] == "off"
    _check_counts(result["params_tf"])


def test_a_failing_profiler_only_prints_and_runs_for_the_first_dtype_alone(capsys):
    bench_gpu = _load("bench_gpu")
    calls = []

    def profiler(run_steps, sync, dtype, args):
        calls.append(dtype)
        raise RuntimeError("no CUPTI")

    args = bench_gpu.parse_args(["--profile", "somewhere"])
    for dtype in args.dtypes:
        bench_gpu.profile_first_dtype("jax", profiler, None, None, dtype, args)
    assert calls == [args.dtypes[0]]
    assert "jax: profiling failed: RuntimeError: no CUPTI" in capsys.readouterr().out
    bench_gpu.profile_first_dtype("jax", profiler, None, None, args.dtypes[0],
                                  bench_gpu.parse_args([]))
    assert calls == [args.dtypes[0]]  # no --profile: not called


@pytest.mark.slow  # end to end (~50 s); its import rule, counts and profiler are tested above
def test_bench_gpu_on_cpu(tmp_path):
    """The GPU benchmark's CPU smoke test: JAX float32 (and PyTorch eager where installed), with
    the profiles it writes."""
    result = run_script("bench_gpu", *TINY, "--repeats", "1", "--no-compile",
                        "--dtypes", "float32", "--profile", str(tmp_path), "--profile-steps", "1")
    assert result["depthwise_impl"] == "auto"
    assert (tmp_path / "jax_float32.xplane.pb").stat().st_size > 0
    for key in ("train_img_s_jax_float32", "train_img_s_torch_float32",
                "ratio_jax_over_torch_float32", "bf16_reaches_target", "bf16_target_img_s",
                "params_jax", "params_equal", "jax_version", "date"):
        assert key in result, key
    assert result["train_img_s_jax_float32"] > 0
    assert result["forbidden_modules_loaded_jax"] == []
    _check_counts(result["params_jax"])
    if _has("torch"):
        assert result["train_img_s_torch_float32"] > 0, result.get("torch_error")
        assert result["ratio_jax_over_torch_float32"] > 0
        assert result["params_equal"] is True
        assert result["forbidden_modules_loaded_torch"] == []
        assert "Self CPU" in (tmp_path / "torch_float32_kernels.txt").read_text()
    else:
        assert "not available" in result["torch_error"]


def test_bench_train_gives_both_sides_the_same_malloc_setting(monkeypatch):
    bench_train = _load("bench_train")
    monkeypatch.setenv("GLIBC_TUNABLES", "glibc.malloc.arena_max=2:glibc.malloc.hugetlb=0")
    thp = bench_train.child_env(2, "on", "thp")
    assert thp["GLIBC_TUNABLES"] == "glibc.malloc.arena_max=2:glibc.malloc.hugetlb=1"
    assert bench_train.child_env(2, "on", "default")["GLIBC_TUNABLES"] == "glibc.malloc.arena_max=2"
    monkeypatch.delenv("GLIBC_TUNABLES")
    assert "GLIBC_TUNABLES" not in bench_train.child_env(2, "on", "default")
    assert bench_train.parse_args([]).malloc == "thp"


def test_bench_loop_counts_only_the_windows_after_the_warm_up(tmp_path):
    bench_loop = _load("bench_loop")
    path = tmp_path / "metrics.jsonl"
    rows = [{"step": 5, "kind": "train", "img_per_s": 1.0},     # the compile: not counted
            {"step": 10, "kind": "train", "img_per_s": 40.0},   # 5 steps x 8 images in 1 s
            {"step": 10, "kind": "val", "nme": 3.0},
            {"step": 20, "kind": "train", "img_per_s": 20.0}]   # 10 steps x 8 images in 4 s
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    img_s, steps = bench_loop.loop_speed(str(path), 8, 5)
    assert steps == 15 and img_s == pytest.approx(15 * 8 / 5.0)
    assert bench_loop.train_windows(str(path), 8) == [(0, 5, 40.0), (5, 5, 1.0), (10, 10, 4.0)]


def test_the_stand_in_faces_are_a_valid_export(tmp_path):
    from asmnet_jax.data import sources

    common = _load("common")
    common.write_random_faces(str(tmp_path), 16, store_size=40)
    arrays = sources.load_npz(sources.npz_path(str(tmp_path), "w300", "train"), 68)
    assert len(arrays) == 16 and arrays.image.shape == (16, 40, 40, 3)
    assert len(sources.load_npz(sources.npz_path(str(tmp_path), "w300", "validation"), 68)) == 2
    cx, cy, side = arrays.box[0]
    assert np.all(np.abs(arrays.landmarks - cx) <= side / 2)


@pytest.mark.slow  # two tiny asmnet-train runs and a step timing (~1-2 min)
def test_bench_loop_end_to_end():
    result = run_script("bench_loop", "--set", "input_size=32", "--set", "batch_size=4",
                        "--random-faces", "32", "--steps", "4", "--warmup", "2", "--log-every",
                        "2", "--step-calls", "2")
    for path in ("host", "device"):
        row = result["paths"][path]
        assert row["loop_img_s"] > 0 and row["step_img_s"] > 0
        assert row["loop_over_step"] == pytest.approx(row["loop_img_s"] / row["step_img_s"])
    assert result["paths"]["device"]["resident_step_img_s"] > 0


HLO_FOR_XPLANE = """HloModule jit_train_step

%fused_dot (p0: f32[8,4], p1: f32[4,2]) -> f32[8,2] {
  %p0 = f32[8,4]{1,0} parameter(0)
  %p1 = f32[4,2]{1,0} parameter(1)
  ROOT %d = f32[8,2]{1,0} dot(f32[8,4]{1,0} %p0, f32[4,2]{1,0} %p1), lhs_contracting_dims={1}, rhs_contracting_dims={0}
}

%fused_sum (p0: f32[8,2]) -> f32[2] {
  %p0 = f32[8,2]{1,0} parameter(0)
  %c = f32[] constant(0)
  ROOT %r = f32[2]{0} reduce(f32[8,2]{1,0} %p0, f32[] %c), dimensions={0}, to_apply=%add
}

ENTRY %main (a: f32[8,4], b: f32[4,2]) -> f32[2] {
  %a = f32[8,4]{1,0} parameter(0)
  %b = f32[4,2]{1,0} parameter(1)
  %ynn_fusion.3 = f32[8,2]{1,0} fusion(f32[8,4]{1,0} %a, f32[4,2]{1,0} %b), kind=kCustom, calls=%fused_dot
  ROOT %ynn_fusion.7 = f32[2]{0} fusion(f32[8,2]{1,0} %ynn_fusion.3), kind=kCustom, calls=%fused_sum
}
"""


def test_xplane_ops_sums_op_events_per_step_and_labels_fusions(tmp_path, capsys):
    """Op events on the CPU runtime's worker threads are summed per op and per family, divided by
    the traced steps; the executor's bookkeeping and other threads are left out; with the HLO,
    YNNPACK fusions are split by what they hold."""
    xplane_pb2 = pytest.importorskip("tensorflow.tsl.profiler.protobuf.xplane_pb2")
    xplane_ops = _load("xplane_ops")
    space = xplane_pb2.XSpace()
    plane = space.planes.add(name="/host:CPU")
    names = ["ynn_fusion.3", "ynn_fusion.7", "add_fusion.1", "add_fusion.2",
             "ThunkExecutor::Execute", "ThreadpoolListener::StartRegion", "python_call"]
    for key, name in enumerate(names, start=1):
        plane.event_metadata[key].id = key
        plane.event_metadata[key].name = name
    ms = 10**9  # picoseconds per millisecond
    workers = [plane.lines.add(name="tf_XLAEigen/1"), plane.lines.add(name="tf_XLAEigen/2")]
    for line, events in zip(workers, ([(1, 6), (5, 100), (3, 2)], [(2, 4), (4, 1), (6, 50)])):
        for key, millis in events:
            line.events.add(metadata_id=key, duration_ps=millis * ms)
    plane.lines.add(name="python").events.add(metadata_id=7, duration_ps=500 * ms)
    trace = tmp_path / "jax_float32.xplane.pb"
    trace.write_bytes(space.SerializeToString())
    hlo = tmp_path / "step.txt"
    hlo.write_text(HLO_FOR_XPLANE)

    xplane_ops.main([str(trace), "--steps", "2", "--hlo", str(hlo)])
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["ms_per_step"] == {"ynn_fusion:dot": 3.0, "add_fusion": 1.5,
                                      "ynn_fusion:reduce": 2.0}
    assert summary["total_ms_per_step"] == 6.5
    assert summary["top"][0] == {"op": "ynn_fusion.3", "ms_per_step": 3.0, "shape": "f32[8,2]{1,0}"}

    xplane_ops.main([str(trace), "--steps", "1"])  # without the HLO: families by name only
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["ms_per_step"] == {"ynn_fusion": 10.0, "add_fusion": 3.0}

    with pytest.raises(SystemExit, match="not an XSpace"):
        (tmp_path / "junk.pb").write_bytes(b"\xff\xff\xff")
        xplane_ops.main([str(tmp_path / "junk.pb")])


def test_xplane_ops_reads_a_device_plane_s_stream_lines_only(tmp_path, capsys):
    """On a GPU trace, kernels on the streams count; the per-op summary line ("XLA Ops") and the
    step markers would count them twice and are left out."""
    xplane_pb2 = pytest.importorskip("tensorflow.tsl.profiler.protobuf.xplane_pb2")
    xplane_ops = _load("xplane_ops")
    space = xplane_pb2.XSpace()
    plane = space.planes.add(name="/device:GPU:0")
    for key, name in enumerate(["loop_fusion.4", "cutlass_gemm", "train_step"], start=1):
        plane.event_metadata[key].id = key
        plane.event_metadata[key].name = name
    stream = plane.lines.add(name="Stream #14(Compute)")
    stream.events.add(metadata_id=1, duration_ps=3 * 10**9)
    stream.events.add(metadata_id=2, duration_ps=5 * 10**9)
    plane.lines.add(name="XLA Ops").events.add(metadata_id=1, duration_ps=3 * 10**9)
    plane.lines.add(name="Steps").events.add(metadata_id=3, duration_ps=9 * 10**9)
    trace = tmp_path / "jax_bfloat16.xplane.pb"
    trace.write_bytes(space.SerializeToString())
    xplane_ops.main([str(trace), "--steps", "1"])
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["ms_per_step"] == {"cutlass_gemm": 5.0, "loop_fusion": 3.0}
