"""Two processes on localhost with two CPU devices each (jax.distributed with gloo CPU
collectives) train in lock-step and end with the parameters of a one-process, one-device run on
the same global batches: the data-parallel step on four devices, reduced within each process and
across the two, equals the step on one.

Both runs compute in float64 (64-bit JAX) without dropout and use SGD, so the only differences are
summation orders (a sum for a mean, or per-device BN statistics, would differ by orders of
magnitude more); each process reads its own half of every global batch from the host pipeline and
splits it over its devices. The two processes then train again on the device path, where each
device cuts its batches from its own shard of the set (so the batches depend on the device count
and there is no one-device run to equal): they must run in lock-step and agree on the result.
"""

import os
import socket
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from conftest import with_fast_compile

WORKER = textwrap.dedent("""
    import sys
    import jax
    port, index, count, workdir = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
    inputs, local_devices = sys.argv[5].split(","), int(sys.argv[6])
    if count > 1:
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
        jax.distributed.initialize(f"localhost:{port}", num_processes=count, process_id=index)
    from asmnet_jax import train
    from asmnet_jax.config_base import base_config
    c = base_config()
    c.input_size = 32
    c.batch_size = 8
    c.synthetic.train = 24
    c.synthetic.validation = 10
    c.num_epochs = 1              # 3 steps: at 32 px and 2-4 faces per device the fresh network is
                                  # chaotic, and rounding differences grow ~1000x per step after
                                  # the third
    c.dropout_rate = 0.0
    c.dtype = "float64"
    # Adam turns rounding noise in zero-gradient directions into full-size steps, and a large SGD
    # step on a fresh network is chaotic; small plain SGD steps keep the comparison meaningful.
    c.optimizer.name = "sgd"
    c.optimizer.b1 = 0.0
    c.optimizer.schedule = "constant"
    c.optimizer.learning_rate = 0.002
    c.progress_bar = False
    for path in inputs:
        c.input = path
        summary = train.train_and_evaluate(c, f"{workdir}_{path}")
        assert summary["processes"] == count and summary["step"] == 3, summary
        assert summary["devices"] == count * local_devices == jax.device_count(), summary
        assert summary["input"] == path, summary
        print("SUMMARY", path, summary["val_nme"], flush=True)
""")


def _free_port():
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def _params(workdir):
    from asmnet_jax import run_dir

    step, state, meta = run_dir.read_checkpoint(workdir, which="latest")
    assert meta["step"] == step
    return step, state


def test_two_processes_of_two_devices_match_one_device(tmp_path):
    env = dict(os.environ, JAX_ENABLE_X64="1", JAX_PLATFORMS="cpu")
    one_device = dict(env, XLA_FLAGS=with_fast_compile())
    two_devices = dict(env, XLA_FLAGS=with_fast_compile(
        "--xla_force_host_platform_device_count=2"))
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    port = _free_port()
    two = str(tmp_path / "two")
    workers = [subprocess.Popen([sys.executable, str(script), str(port), str(i), "2", two,
                                 "host,device", "2"],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                env=two_devices)
               for i in range(2)]
    one = subprocess.run([sys.executable, str(script), "0", "0", "1", str(tmp_path / "one"),
                          "host", "1"],
                         capture_output=True, text=True, env=one_device, timeout=900)
    outputs = [w.communicate(timeout=900) for w in workers]
    for worker, (_, err) in zip(workers, outputs):
        assert worker.returncode == 0, err[-3000:]
    assert one.returncode == 0, one.stderr[-3000:]
    step_one, state_one = _params(str(tmp_path / "one_host"))
    step_two, state_two = _params(two + "_host")
    assert step_one == step_two == 3
    import jax

    diffs = jax.tree_util.tree_map(
        lambda a, b: float(np.max(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64)))),
        (state_one["params"], state_one["batch_stats"]),
        (state_two["params"], state_two["batch_stats"]))
    assert max(jax.tree_util.tree_leaves(diffs)) <= 1e-5
    # The device path: both processes trained 3 steps and report the same validation NME (each
    # evaluates every face, gathered from all four devices).
    device = [[line for line in out.splitlines() if line.startswith("SUMMARY device")]
              for out, _ in outputs]
    assert all(len(lines) == 1 for lines in device), outputs
    assert device[0] == device[1]
    assert _params(two + "_device")[0] == 3
