"""Build and load the CPU matrix-vector kernels (gemv.cpp) once per source, torch and compiler.

The shared library is compiled with the C++ compiler Inductor already needs (``CXX``, else ``c++``;
~15 s on 2 cores) into a cache directory (``<--compile-cache-dir>/csm-kernels`` when that is set,
else ``~/.cache/csm-service/kernels``) under a name that hashes the source, the flags, torch's
version and the compiler's, so a restart loads it in milliseconds and a changed source or torch
builds anew. The first load in a process decides where it came from. Two processes building at once each compile
to a private temporary file and rename it into place: neither reads a half-written library.

The kernels use AVX-512 (bf16 dot products, VNNI), so they are only built and loaded on a CPU whose
flags say it has them; anywhere else, or if the build fails (no compiler), :func:`load` returns
False and the model keeps oneDNN's and fbgemm's kernels (as it does with ``--no-cpu-kernels``).
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
import subprocess
import sysconfig
import tempfile
import threading
from pathlib import Path

import torch
from torch.utils import cpp_extension

__all__ = ["REQUIRED_CPU_FLAGS", "cpu_flags", "cpu_has_flags", "library_path", "load"]

log = logging.getLogger(__name__)

SOURCE = Path(__file__).with_name("gemv.cpp")
REQUIRED_CPU_FLAGS = ("avx512f", "avx512bw", "avx512vl", "avx512dq", "avx512_bf16", "avx512_vnni")
_ARCH_FLAGS = ("-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512dq", "-mavx512bf16", "-mavx512vnni", "-mfma")
_load_lock = threading.Lock()


def cpu_flags(cpuinfo: str = "/proc/cpuinfo") -> frozenset[str]:
    """The CPU's feature flags (empty where /proc/cpuinfo cannot be read)."""
    try:
        text = Path(cpuinfo).read_text()
    except OSError:
        return frozenset()
    for line in text.splitlines():
        if line.startswith("flags"):
            return frozenset(line.split(":", 1)[1].split())
    return frozenset()


def cpu_has_flags(cpuinfo: str = "/proc/cpuinfo") -> bool:
    """Whether this CPU has every flag the kernels are compiled for."""
    return set(REQUIRED_CPU_FLAGS) <= cpu_flags(cpuinfo)


def _compiler() -> str:
    return os.environ.get("CXX", "c++")


def _is_clang() -> bool:
    return "clang" in _compiler_version().lower()


def _command(output: Path) -> list[str]:
    torch_lib = Path(torch.__file__).parent / "lib"
    abi = int(torch._C._GLIBCXX_USE_CXX11_ABI)
    return [
        _compiler(),
        "-O3",
        "-std=c++17",
        "-shared",
        "-fPIC",
        # at::parallel_for is an OpenMP region in the header: the GNU runtime torch's wheel ships
        # (libgomp.so.1) must run it, not clang's libomp beside it (a second pool of threads).
        "-fopenmp=libgomp" if _is_clang() else "-fopenmp",
        *_ARCH_FLAGS,
        f"-D_GLIBCXX_USE_CXX11_ABI={abi}",
        *(f"-I{p}" for p in cpp_extension.include_paths()),
        f"-I{sysconfig.get_paths()['include']}",
        str(SOURCE),
        f"-L{torch_lib}",
        "-lc10",
        "-ltorch_cpu",
        f"-Wl,-rpath,{torch_lib}",
        "-o",
        str(output),
    ]


@functools.cache
def _compiler_version() -> str:
    try:
        return subprocess.run([_compiler(), "--version"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return ""


def library_path(cache_dir: str = "") -> Path:
    """Where the built library for this source, torch and compiler lives (under ``cache_dir`` when
    given)."""
    key = hashlib.sha256()
    command = " ".join(_command(Path("out.so")))  # every flag, include path and library
    for part in (SOURCE.read_bytes(), torch.__version__.encode(), _compiler_version().encode(), command.encode()):
        key.update(part)
    cache = Path(cache_dir) / "csm-kernels" if cache_dir else Path.home() / ".cache" / "csm-service" / "kernels"
    return cache / f"csm_cpu_gemv_{key.hexdigest()[:16]}.so"


def _build(target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=target.stem + ".", suffix=".so.tmp", dir=target.parent)
    os.close(fd)
    try:
        done = subprocess.run(_command(Path(tmp)), capture_output=True, text=True, timeout=600)
        if done.returncode != 0:
            raise RuntimeError(f"building {SOURCE.name} failed:\n{done.stderr[-4000:]}")
        os.replace(tmp, target)  # atomic: a concurrent loader sees no library or a whole one
    finally:
        Path(tmp).unlink(missing_ok=True)


def _load_once(cache_dir: str) -> bool:
    if not cpu_has_flags():
        log.info("CPU gemv kernels not used: the CPU lacks one of %s", ", ".join(REQUIRED_CPU_FLAGS))
        return False
    try:
        target = library_path(cache_dir)
        if not target.exists():
            log.info("building the CPU gemv kernels into %s", target)
            _build(target)
        try:
            torch.ops.load_library(str(target))
        except OSError as exc:  # a damaged library in the cache: build it once more
            log.warning("rebuilding %s, which did not load: %s", target, exc)
            _build(target)
            torch.ops.load_library(str(target))
    except (OSError, RuntimeError, subprocess.SubprocessError) as exc:
        log.warning("CPU gemv kernels unavailable, using oneDNN/fbgemm: %s", exc)
        return False
    return True


_loaded: list[bool] = []  # the first load's result: a library cannot be loaded twice


def load(cache_dir: str = "") -> bool:
    """Build (first time) and load the kernels -> whether ``torch.ops.csm_cpu`` can be used."""
    with _load_lock:
        if not _loaded:
            _loaded.append(_load_once(cache_dir))
        return _loaded[0]
