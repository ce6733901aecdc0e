"""Where a traced JAX step spends its time: op times from a profiler trace (``.xplane.pb``), summed.

``python -m experiments.bench_gpu --profile DIR`` traces a few train steps with JAX's profiler and
keeps the ``jax_<dtype>.xplane.pb`` file (on a GPU machine or on this CPU). This script reads such
a file and adds up, per op, the time of its events: on the CPU the XLA thunks (fusions, YNNPACK
fusions, dots) on the runtime's worker threads; on a GPU, the events of the device planes' lines
(the streams' kernels; this path has not yet been run on a real GPU trace). The executor's own
bookkeeping events (``ThunkExecutor``, thread-pool regions) are left out: they enclose or accompany
the ops rather than add to them.

Ops are grouped by family, their name without the numeric suffix XLA appends
(``multiply_reduce_fusion.25`` -> ``multiply_reduce_fusion``). With ``--hlo`` (the step's
``*.cpu_after_optimizations.txt`` from ``XLA_FLAGS="--xla_dump_to=DIR --xla_dump_hlo_as_text"``),
each fusion is also labelled by what its fused computation holds: ``ynn_fusion`` splits into
``ynn_fusion:dot`` / ``:reduce`` / ``:elementwise``, and the largest ops are listed with their
output shapes.

On the CPU the runtime runs an op on several threads but records it on the thread that started it,
and independent ops may overlap, so the sum of op times is close to, not equal to, the step's
wall time; shares of that sum are what to compare.

    XLA_FLAGS="--xla_dump_to=/tmp/hlo --xla_dump_hlo_as_text" \\
        python -m experiments.bench_gpu --dtypes float32 --batch 32 --size 224 --steps 3 \\
        --repeats 1 --warmup 2 --profile /tmp/prof --sides jax
    python -m experiments.xplane_ops /tmp/prof/jax_float32.xplane.pb --steps 3 \\
        --hlo /tmp/hlo/module_*jit_train_step.cpu_after_optimizations.txt

The last output line is JSON: ``ms_per_step`` by family, ``total_ms_per_step`` and the ``top`` ops.
Reading the protobuf needs ``xplane_pb2`` (TensorFlow's ``tensorflow.tsl.profiler.protobuf`` or
the ``tsl`` package of xprof / tensorboard-plugin-profile).
"""

from __future__ import annotations

import argparse
import collections
import json
import re
import sys

#: Events that are the executor's bookkeeping, not ops (CPU thunk runtime).
BOOKKEEPING = ("ThunkExecutor", "ThreadpoolListener", "SlinkyThreadPool", "end: ")


def load_xspace(path):
    """The XSpace protobuf in ``path``; a clear error when no ``xplane_pb2`` can be imported."""
    xplane_pb2 = None
    for module in ("tensorflow.tsl.profiler.protobuf.xplane_pb2", "tsl.profiler.protobuf.xplane_pb2"):
        try:
            xplane_pb2 = __import__(module, fromlist=["XSpace"])
            break
        except ImportError:
            continue
    if xplane_pb2 is None:
        raise SystemExit("xplane_ops.py: reading an .xplane.pb needs xplane_pb2: install tensorflow "
                         "(pip install -e '.[test]') or tensorboard-plugin-profile")
    space = xplane_pb2.XSpace()
    try:
        with open(path, "rb") as f:
            space.ParseFromString(f.read())
    except OSError as error:
        raise SystemExit(f"xplane_ops.py: cannot read {path}: {error}") from error
    except Exception as error:  # protobuf's DecodeError
        raise SystemExit(f"xplane_ops.py: {path} is not an XSpace protobuf: {error}") from error
    return space


def op_lines(plane):
    """The lines of ``plane`` that hold ops: the XLA CPU runtime's worker threads on the host
    plane (``tf_XLAEigen/...``), every line but the step and module markers on a device plane."""
    for line in plane.lines:
        if plane.name.startswith("/host:"):
            if "XLAEigen" in line.name:
                yield line
        elif plane.name.startswith("/device:") and line.name not in ("Steps", "XLA Modules",
                                                                       "XLA Ops", "Source"):
            yield line


def op_times(space) -> collections.Counter:
    """Seconds per op name, summed over the op lines of every plane."""
    times = collections.Counter()
    for plane in space.planes:
        names = {key: meta.name for key, meta in plane.event_metadata.items()}
        for line in op_lines(plane):
            for event in line.events:
                name = names.get(event.metadata_id, "?")
                if not name.startswith(BOOKKEEPING):
                    times[name] += event.duration_ps * 1e-12
    return times


def family(name: str) -> str:
    """``multiply_reduce_fusion.25`` -> ``multiply_reduce_fusion``."""
    return re.sub(r"\.\d+$", "", name)


def parse_hlo(text: str):
    """(instruction name -> its right-hand side, computation name -> its body) of an HLO module."""
    computations = {m.group(1).lstrip("%"): m.group(2)
                    for m in re.finditer(r"^(%?[\w.\-]+) [^\n]*\{\n(.*?)\n\}", text, re.S | re.M)}
    instructions = {}
    for line in text.splitlines():
        m = re.match(r"\s*(?:ROOT )?%?([\w.\-]+) = (.*)", line)
        if m:
            instructions.setdefault(m.group(1), m.group(2))
    return instructions, computations


def label(name: str, hlo) -> tuple[str, str]:
    """(family, output shape) of op ``name``; with the HLO, YNNPACK fusions are told apart by the
    ops they hold (``dot`` first, then ``reduce``, else elementwise)."""
    base = family(name)
    if hlo is None:
        return base, ""
    instructions, computations = hlo
    rhs = instructions.get(name, "")
    shape = rhs.split(" ")[0] if rhs else ""
    called = re.search(r"calls=%?([\w.\-]+)", rhs)
    ops = set(re.findall(r"= \S+ ([a-z][\w-]*)\(", computations.get(called.group(1), ""))
              if called else ())
    if base == "ynn_fusion" and ops:
        kind = "dot" if "dot" in ops else "reduce" if "reduce" in ops else "elementwise"
        base = f"{base}:{kind}"
    return base, shape


def summarise(times, steps: int, hlo=None, top: int = 25) -> dict:
    """Per-step milliseconds by family, their total, and the ``top`` largest ops."""
    by_family = collections.Counter()
    shapes = {}
    for name, seconds in times.items():
        group, shapes[name] = label(name, hlo)
        by_family[group] += seconds
    per_step = 1e3 / steps
    return {
        "ms_per_step": {k: round(v * per_step, 3) for k, v in by_family.most_common()},
        "total_ms_per_step": round(sum(times.values()) * per_step, 3),
        "top": [{"op": name, "ms_per_step": round(seconds * per_step, 3), "shape": shapes[name]}
                for name, seconds in times.most_common(top)],
    }


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("xplane", help="an .xplane.pb written by bench_gpu.py --profile")
    parser.add_argument("--steps", type=int, default=3,
                        help="how many steps the trace holds (bench_gpu.py --profile-steps)")
    parser.add_argument("--hlo", help="the step's optimised HLO text, to label fusions and shapes")
    parser.add_argument("--top", type=int, default=25, help="how many of the largest ops to list")
    args = parser.parse_args(argv)
    if args.steps < 1:
        parser.error(f"--steps must be at least 1, got {args.steps}")
    return args


def main(argv=None):
    args = parse_args(argv)
    hlo = None
    if args.hlo:
        try:
            with open(args.hlo) as f:
                hlo = parse_hlo(f.read())
        except OSError as error:
            raise SystemExit(f"xplane_ops.py: cannot read --hlo {args.hlo}: {error}") from error
    times = op_times(load_xspace(args.xplane))
    if not times:
        raise SystemExit(f"xplane_ops.py: {args.xplane} holds no op events (was the step traced?)")
    summary = summarise(times, args.steps, hlo, args.top)
    total = summary["total_ms_per_step"]
    print(f"op time per step: {total:.1f} ms (sum over ops; see the module docstring)")
    small = {group: ms for group, ms in summary["ms_per_step"].items() if ms < 0.005 * total}
    for group, ms in summary["ms_per_step"].items():
        if group not in small:
            print(f"{ms:10.1f} ms {ms / total:6.1%}  {group}")
    if small:
        print(f"{sum(small.values()):10.1f} ms  in {len(small)} smaller families (each < 0.5 %)")
    print("largest ops:")
    for row in summary["top"]:
        print(f"{row['ms_per_step']:10.2f} ms  {row['op']:32s} {row['shape']}")
    print(json.dumps(summary))


if __name__ == "__main__":
    sys.exit(main())
