"""pytest: the binding's version (header, _lib.py, __version__, the wheel's metadata
rule in pyproject.toml), the import-time library version check (against fake tiny
libraries built with cc) and `python -m burst_attention`.

Runs against the library found by the binding's lookup, like test_binding.py.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys

import pytest

from _testenv import BINDING, HERE, ROOT  # noqa: E402  (sys.path, BURST_ATTENTION_LIBRARY)

import burst_attention as ba  # noqa: E402
from burst_attention import _lib, _selfcheck  # noqa: E402
from burst_attention import __main__ as ba_main  # noqa: E402


def _header_version():
    text = open(os.path.join(ROOT, "include", "burst_attention.h"), encoding="utf-8").read()
    parts = [re.search(rf"^#define BURST_VERSION_{p} (\d+)$", text, re.M).group(1)
             for p in ("MAJOR", "MINOR", "PATCH")]
    return ".".join(parts)


def _pyproject():
    path = os.path.join(BINDING, "pyproject.toml")
    try:
        import tomllib
    except ImportError:  # Python < 3.11
        tomli = pytest.importorskip("tomli")
        return tomli.load(open(path, "rb"))
    with open(path, "rb") as f:
        return tomllib.load(f)


# --------------------------------------------------------------------------- versions

def test_binding_version_is_the_header_version():
    want = _header_version()
    assert _lib.VERSION == want
    assert ba.__version__ == want
    major, minor, patch = (int(x) for x in want.split("."))
    assert (ba.VERSION_MAJOR, ba.VERSION_MINOR, ba.VERSION_PATCH) == (major, minor, patch)
    assert ba.VERSION_NUMBER == major * 10000 + minor * 100 + patch


def test_root_cmake_project_version_is_the_header_version():
    text = open(os.path.join(ROOT, "CMakeLists.txt"), encoding="utf-8").read()
    assert re.search(r"project\(BurstAttention VERSION (\S+)", text).group(1) == _header_version()


def test_wheel_version_rule_reads_the_binding_version():
    """The [[tool.dynamic-metadata]] regex of pyproject.toml, applied here as
    scikit-build-core applies it (re.search, MULTILINE, then result.format)."""
    pyproject = _pyproject()
    assert "version" in pyproject["project"]["dynamic"]
    (entry,) = [e for e in pyproject["tool"]["dynamic-metadata"] if e["field"] == "version"]
    assert entry["provider"] == "scikit_build_core.metadata.regex"
    text = open(os.path.join(BINDING, entry["input"]), encoding="utf-8").read()
    match = re.search(entry["regex"], text, re.MULTILINE)
    assert match, entry["regex"]
    assert entry["result"].format(*match.groups(), **match.groupdict()) == _header_version()


def test_pyproject_settings():
    pyproject = _pyproject()
    project, skb = pyproject["project"], pyproject["tool"]["scikit-build"]
    assert pyproject["build-system"]["build-backend"] == "scikit_build_core.build"
    assert project["name"] == "burst-attention"
    assert project["dependencies"] == ["numpy"]
    assert project["optional-dependencies"] == {"mpi": ["mpi4py"], "torch": ["torch"]}
    assert skb["install"]["components"] == ["python"]
    assert skb["wheel"]["packages"] == ["burst_attention"]
    assert skb["cmake"]["build-type"] == "Release"
    assert skb["ninja"]["make-fallback"] is False


def test_loaded_library_version_matches():
    assert ba.version() // 100 == ba.VERSION_NUMBER // 100
    assert ba.build_info().startswith(f"libburst_attention {_lib._version_string(ba.version())}")


# --------------------------------------------------------------------------- version check

def _fake_library_source():
    """C source exporting every function the binding declares; burst_version returns
    FAKE_VERSION (only burst_version is ever called by an import)."""
    lines = ["#include <stdint.h>",
             "uint32_t burst_version(void) { return FAKE_VERSION; }"]
    for name in _lib._SIGNATURES:
        if name != "burst_version":
            lines.append(f"void *{name}(void) {{ return 0; }}")
    return "\n".join(lines) + "\n"


@pytest.fixture(scope="module")
def fake_library(tmp_path_factory):
    cc = shutil.which(os.environ.get("CC", "cc")) or shutil.which("gcc")
    if cc is None:
        pytest.skip("no C compiler for the fake libraries")
    root = tmp_path_factory.mktemp("fake_lib")
    src = root / "fake.c"
    src.write_text(_fake_library_source())
    built = {}

    def build(number):
        if number not in built:
            out = root / f"v{number}" / "libburst_attention.so"
            out.parent.mkdir()
            subprocess.run([cc, "-shared", "-fPIC", f"-DFAKE_VERSION={number}u",
                            "-o", str(out), str(src)], check=True)
            built[number] = str(out)
        return built[number]
    return build


def _import_with(library):
    env = dict(os.environ, BURST_ATTENTION_LIBRARY=library, PYTHONPATH=BINDING,
               PYTHONDONTWRITEBYTECODE="1")
    code = "import burst_attention as ba; print(ba.version(), ba.library_path)"
    return subprocess.run([sys.executable, "-c", code], env=env, cwd=str(os.path.dirname(library)),
                          capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("number", [
    10000,                              # 1.0.0: another MAJOR
    (ba.VERSION_MAJOR + 1) * 10000 + ba.VERSION_MINOR * 100 + ba.VERSION_PATCH,
    ba.VERSION_NUMBER + 100,            # next MINOR
    ba.VERSION_NUMBER - 100 if ba.VERSION_MINOR else 9999 * 100,  # previous MINOR
    0,
])
def test_import_rejects_other_major_or_minor(fake_library, number):
    path = fake_library(number)
    proc = _import_with(path)
    assert proc.returncode != 0, proc.stdout
    assert "ImportError" in proc.stderr, proc.stderr
    assert "version mismatch" in proc.stderr
    assert _lib.VERSION in proc.stderr                      # the binding's version
    assert _lib._version_string(number) in proc.stderr      # the library's version
    assert path in proc.stderr                              # which file


@pytest.mark.parametrize("patch", [1, 99])
def test_import_accepts_other_patch(fake_library, patch):
    number = ba.VERSION_NUMBER // 100 * 100 + patch
    path = fake_library(number)
    proc = _import_with(path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == [str(number), path]


def test_import_accepts_the_same_version(fake_library):
    proc = _import_with(fake_library(ba.VERSION_NUMBER))
    assert proc.returncode == 0, proc.stderr


# --------------------------------------------------------------------------- python -m

def _run_main(*args):
    env = dict(os.environ, PYTHONPATH=BINDING, PYTHONDONTWRITEBYTECODE="1")
    return subprocess.run([sys.executable, "-m", "burst_attention", *args], env=env,
                          cwd=HERE, capture_output=True, text=True, timeout=300)


def test_main_prints_info_and_passes():
    proc = _run_main()
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    assert f"burst_attention package {ba.__version__}" in out
    assert f"library version: {_lib._version_string(ba.version())}" in out
    assert f"library path: {ba.library_path}" in out
    assert f"build info: {ba.build_info()}" in out
    assert re.search(r"^mpi4py: ", out, re.M) and re.search(r"^torch: ", out, re.M)
    passes = [line for line in out.splitlines() if line.startswith("PASS ")]
    assert len(passes) == 6, out  # self x2, loopback x2, torch layer x2 (torch is installed)
    assert sum("loopback(2)" in line for line in passes) == 2
    assert sum("torch layer" in line for line in passes) == 2
    assert "FAIL" not in out
    assert out.rstrip().endswith("self-check: PASS")


def test_main_quiet_prints_nothing_on_success():
    proc = _run_main("--quiet")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout == ""


def test_main_no_selfcheck():
    proc = _run_main("--no-selfcheck")
    assert proc.returncode == 0, proc.stderr
    assert "library path:" in proc.stdout and "PASS" not in proc.stdout


def test_main_bad_option():
    proc = _run_main("--bogus")
    assert proc.returncode == 2 and "usage:" in proc.stderr


def test_selfcheck_fails_on_a_wrong_result(monkeypatch, capsys):
    """A result off by more than the tolerance makes every check FAIL and main() return 1."""
    right = _selfcheck.reference

    def wrong(*args):
        out, lse, dq, dk, dv = right(*args)
        return out * (1 + 1e-4), lse, dq, dk, dv
    monkeypatch.setattr(_selfcheck, "reference", wrong)
    assert ba_main.main(["--quiet"]) == 1
    out = capsys.readouterr().out
    assert out.count("FAIL ") == 6 and "PASS" not in out
    assert out.rstrip().endswith("self-check: FAIL")


def test_selfcheck_reports_an_exception_as_fail(monkeypatch):
    def boom(*args, **kwargs):
        raise RuntimeError("no context today")
    monkeypatch.setattr(ba.Context, "loopback", boom)
    lines = []
    assert _selfcheck.run(ba, lambda ok, line: lines.append((ok, line))) is False
    assert [ok for ok, _ in lines] == [True, True, False, False, True, True]
    assert all("RuntimeError: no context today" in line for ok, line in lines if not ok)


def test_selfcheck_reference_is_float64_and_right_shape():
    q, k, v, dout = _selfcheck.problem(0)
    out, lse, dq, dk, dv = _selfcheck.reference(q, k, v, dout, True)
    assert out.dtype == lse.dtype == dq.dtype == "float64"
    assert out.shape == dq.shape == dk.shape == dv.shape == q.shape
    assert lse.shape == (q.shape[0], q.shape[2], q.shape[1])
    # causal: the first query sees only the first key, so its output is that value row
    assert abs(out[0, 0] - v[0, 0]).max() < 1e-6

