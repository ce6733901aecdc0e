"""Transparent huge pages for glibc's malloc, for training on the CPU.

XLA's CPU runtime allocates every large temporary of a step with ``malloc``. Above glibc's mmap
threshold (at most 32 MiB) each one is a fresh ``mmap``, so every step touches its activations'
memory page by page again: at batch 32 and 224 x 224 that is tens of thousands of page faults
per step, and the kernel zeroes every page. ``GLIBC_TUNABLES=glibc.malloc.hugetlb=1`` (glibc 2.35
and later) makes malloc ask for transparent huge pages (``madvise(MADV_HUGEPAGE)``) on those
mappings: 2 MiB pages, a few hundred faults. On this project's 2-core test machine the batch-32
train step went from 1.7-1.9 s to 1.2-1.4 s (``experiments/RESULTS.md``). Values do not change.

glibc reads its tunables once, when the process starts, so :func:`reexec_with_thp` restarts the
command (``os.execve``, same PID, arguments and environment plus the tunable) before anything
else has run. ``asmnet-train`` calls it first. It does nothing when:

* ``ASMNET_THP`` is ``0`` / ``false`` / ``off`` / ``no`` (the opt-out);
* ``GLIBC_TUNABLES`` already sets ``glibc.malloc.hugetlb`` (the user's choice is kept);
* the system is not Linux with glibc 2.35 or later, or transparent huge pages are ``never``;
* the process is itself the restarted one (``ASMNET_THP_RESTARTED`` is set).
"""

from __future__ import annotations

import os
import platform
import sys
from typing import Mapping, Optional, Tuple

TUNABLE = "glibc.malloc.hugetlb=1"
OPT_OUT = "ASMNET_THP"
MARKER = "ASMNET_THP_RESTARTED"
THP_SETTING = "/sys/kernel/mm/transparent_hugepage/enabled"
MIN_GLIBC = (2, 35)


def thp_mode(path: str = THP_SETTING) -> Optional[str]:
    """The kernel's THP mode (``always``, ``madvise`` or ``never``), or None if unknown."""
    try:
        with open(path) as f:
            text = f.read()
    except OSError:
        return None
    start, end = text.find("["), text.find("]")
    return text[start + 1:end] if 0 <= start < end else None


def _glibc_version(libc: Tuple[str, str]) -> Optional[Tuple[int, ...]]:
    name, version = libc
    if name != "glibc":
        return None
    try:
        return tuple(int(part) for part in version.split(".")[:2])
    except ValueError:
        return None


def _hugetlb_settings(tunables: str) -> list:
    """The ``glibc.malloc.hugetlb=...`` entries of a ``GLIBC_TUNABLES`` value."""
    return [t for t in tunables.split(":") if t.startswith("glibc.malloc.hugetlb=")]


def with_hugetlb(tunables: str, enabled: bool) -> str:
    """``tunables`` (a ``GLIBC_TUNABLES`` value) with any ``glibc.malloc.hugetlb`` entry replaced
    by :data:`TUNABLE` when ``enabled``, or removed otherwise; the other entries are kept."""
    kept = [t for t in tunables.split(":") if t and t not in _hugetlb_settings(tunables)]
    return ":".join(kept + [TUNABLE] if enabled else kept)


def thp_environment(environ: Mapping[str, str], system: str, libc: Tuple[str, str],
                    mode: Optional[str]) -> Optional[dict]:
    """The environment to restart with, or None when the process should go on as it is."""
    if environ.get(OPT_OUT, "").strip().lower() in ("0", "false", "off", "no"):
        return None
    if environ.get(MARKER):
        return None
    tunables = environ.get("GLIBC_TUNABLES", "")
    if _hugetlb_settings(tunables):
        return None
    version = _glibc_version(libc)
    if system != "Linux" or version is None or version < MIN_GLIBC:
        return None
    if mode not in ("always", "madvise"):
        return None
    env = dict(environ)
    env["GLIBC_TUNABLES"] = with_hugetlb(tunables, enabled=True)
    env[MARKER] = "1"
    return env


def reexec_with_thp() -> None:
    """Restarts this process with :data:`TUNABLE` when :func:`thp_environment` says so.

    Call it first thing in a command-line entry point, before JAX is imported. If the restart
    itself fails the process goes on unchanged.
    """
    env = thp_environment(os.environ, platform.system(), platform.libc_ver(), thp_mode())
    if env is None:
        return
    argv = [sys.executable] + list(getattr(sys, "orig_argv", [sys.executable] + sys.argv)[1:])
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        os.execve(sys.executable, argv, env)
    except OSError:
        return


def status() -> str:
    """One line for the logs: whether malloc uses huge pages in this process, and how to change it."""
    tunables = os.environ.get("GLIBC_TUNABLES", "")
    setting = _hugetlb_settings(tunables)
    if setting and setting[-1] != "glibc.malloc.hugetlb=0":
        return (f"glibc malloc uses transparent huge pages (GLIBC_TUNABLES={tunables}; "
                f"{OPT_OUT}=0 turns this off)")
    return "glibc malloc without transparent huge pages"
