"""asmnet_jax.hugepages: when asmnet-train restarts itself with glibc's huge-page tunable."""

import os
import platform
import subprocess
import sys

import pytest

from asmnet_jax import hugepages

GLIBC = ("glibc", "2.36")


def env_for(environ, system="Linux", libc=GLIBC, mode="madvise"):
    return hugepages.thp_environment(environ, system, libc, mode)


def test_adds_the_tunable_and_the_marker_and_keeps_the_rest():
    env = env_for({"PATH": "/bin", "GLIBC_TUNABLES": "glibc.malloc.arena_max=2"})
    assert env["GLIBC_TUNABLES"] == "glibc.malloc.arena_max=2:glibc.malloc.hugetlb=1"
    assert env[hugepages.MARKER] == "1"
    assert env["PATH"] == "/bin"
    assert env_for({})["GLIBC_TUNABLES"] == "glibc.malloc.hugetlb=1"
    assert env_for({}, mode="always") is not None


def test_with_hugetlb_replaces_or_removes_only_the_hugetlb_entry():
    assert hugepages.with_hugetlb("", True) == hugepages.TUNABLE
    assert hugepages.with_hugetlb("", False) == ""
    mixed = "glibc.malloc.arena_max=2:glibc.malloc.hugetlb=0:glibc.mem.tagging=1"
    assert (hugepages.with_hugetlb(mixed, True)
            == "glibc.malloc.arena_max=2:glibc.mem.tagging=1:" + hugepages.TUNABLE)
    assert hugepages.with_hugetlb(mixed, False) == "glibc.malloc.arena_max=2:glibc.mem.tagging=1"


@pytest.mark.parametrize("environ", [
    {"ASMNET_THP": "0"}, {"ASMNET_THP": "off"}, {"ASMNET_THP": "False"},
    {"GLIBC_TUNABLES": "glibc.malloc.hugetlb=0"},  # the user's own choice stays
    {hugepages.MARKER: "1"},  # already restarted: never loop
])
def test_leaves_the_process_alone_when_told_or_done(environ):
    assert env_for(environ) is None


@pytest.mark.parametrize("system, libc, mode", [
    ("Darwin", ("", ""), "madvise"),
    ("Linux", ("musl", "1.2"), "madvise"),
    ("Linux", ("glibc", "2.34"), "madvise"),  # no hugetlb tunable before 2.35
    ("Linux", GLIBC, "never"),
    ("Linux", GLIBC, None),  # no THP support in the kernel
])
def test_leaves_the_process_alone_where_it_cannot_help(system, libc, mode):
    assert env_for({}, system, libc, mode) is None


def test_thp_mode_reads_the_bracketed_choice(tmp_path):
    setting = tmp_path / "enabled"
    setting.write_text("always [madvise] never\n")
    assert hugepages.thp_mode(str(setting)) == "madvise"
    assert hugepages.thp_mode(str(tmp_path / "missing")) is None


SNIPPET = ("from asmnet_jax import hugepages; hugepages.reexec_with_thp(); import os, sys; "
           "print(os.environ.get('GLIBC_TUNABLES'), sys.argv[1:])")


def run_snippet(**env):
    environ = {k: v for k, v in os.environ.items()
               if k not in ("GLIBC_TUNABLES", hugepages.OPT_OUT, hugepages.MARKER)}
    environ.update(env)
    out = subprocess.run([sys.executable, "-c", SNIPPET, "--flag", "a b"], env=environ,
                         capture_output=True, text=True, check=True, timeout=60)
    return out.stdout.strip()


@pytest.mark.skipif(hugepages.thp_environment({}, platform.system(), platform.libc_ver(),
                                              hugepages.thp_mode()) is None,
                    reason="needs Linux, glibc >= 2.35 and transparent huge pages")
def test_the_restart_keeps_the_arguments_and_sets_the_tunable():
    assert run_snippet() == "glibc.malloc.hugetlb=1 ['--flag', 'a b']"
    assert run_snippet(ASMNET_THP="0") == "None ['--flag', 'a b']"


def test_status_reports_any_hugetlb_setting(monkeypatch):
    monkeypatch.setenv("GLIBC_TUNABLES", "glibc.malloc.arena_max=2:glibc.malloc.hugetlb=2")
    assert hugepages.status().startswith("glibc malloc uses transparent huge pages")
    monkeypatch.setenv("GLIBC_TUNABLES", "glibc.malloc.hugetlb=0")
    assert hugepages.status() == "glibc malloc without transparent huge pages"
    monkeypatch.delenv("GLIBC_TUNABLES")
    assert hugepages.status() == "glibc malloc without transparent huge pages"
