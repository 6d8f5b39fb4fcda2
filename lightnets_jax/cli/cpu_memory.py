"""Let XLA's CPU steps reuse the memory the process already holds (glibc tunables, synchronous dispatch).

XLA on CPU allocates each step's activations and gradients afresh, and glibc serves buffers this
large with new ``mmap`` regions that the kernel faults in and zeroes, then unmaps when the step
frees them: hundreds of thousands of page faults per training step. Three settings stop that
(docs/performance.md, "Memory"):

* ``glibc.malloc.hugetlb=1`` (kernels whose transparent huge pages are in ``madvise`` mode,
  glibc >= 2.35): 2 MiB pages instead of 4 KiB ones;
* ``glibc.malloc.mmap_max=0`` and a large ``glibc.malloc.trim_threshold``: large blocks come from
  the heap, and what a step frees stays there for the next step instead of going back to the
  kernel (which would zero it again);
* synchronous dispatch on CPU (``jax_cpu_enable_async_dispatch=False``): the step then runs, and
  allocates, on the calling thread, whose arena is glibc's main heap. With asynchronous dispatch
  XLA allocates on its own thread, from a per-thread arena that maps blocks over 64 MiB with
  ``mmap`` whatever ``mmap_max`` says. Only worth it with the heap settings, so it follows them.

Tunables are read when a process starts, so the ``lightnets`` command restarts itself once with
the missing ones added (never overriding a value the user set); code that imports the library
sets them in its own environment (see the README).
"""

from __future__ import annotations

import os
import platform
import sys
from pathlib import Path

HUGETLB = "glibc.malloc.hugetlb"
MMAP_MAX = "glibc.malloc.mmap_max"
TRIM_THRESHOLD = "glibc.malloc.trim_threshold"
# Freed heap memory is returned to the kernel only above this much at the top: never, in practice.
KEEP_HEAP = {MMAP_MAX: "0", TRIM_THRESHOLD: str(64 << 30)}
# Set to 1 to keep the command from restarting itself (e.g. under a debugger or a profiler).
OPT_OUT_ENV = "LIGHTNETS_NO_MALLOC_TUNING"
THP_MODE_FILE = Path("/sys/kernel/mm/transparent_hugepage/enabled")


def thp_mode(mode_file: Path = THP_MODE_FILE) -> str | None:
    """The kernel's transparent-huge-page mode (``always``, ``madvise``, ``never``), None if unknown."""
    try:
        text = mode_file.read_text()
    except OSError:
        return None
    start, end = text.find("["), text.find("]")
    return text[start + 1:end] if 0 <= start < end else None


def glibc_version() -> tuple[int, int] | None:
    libc, version = platform.libc_ver()
    if sys.platform != "linux" or libc != "glibc":
        return None
    try:
        major, minor = (int(part) for part in version.split(".")[:2])
    except ValueError:
        return None
    return major, minor


def tunables(environ: dict[str, str]) -> dict[str, str]:
    """The ``GLIBC_TUNABLES`` of an environment (``name=value`` pairs joined by ``:``)."""
    pairs = (item.partition("=") for item in environ.get("GLIBC_TUNABLES", "").split(":") if item)
    return {name: value for name, _, value in pairs}


def helpful_tunables(mode: str | None, glibc: tuple[int, int] | None) -> dict[str, str]:
    """The tunables that help on this kernel and glibc (none off glibc)."""
    if glibc is None or glibc < (2, 26):  # GLIBC_TUNABLES' malloc settings arrived in 2.26
        return {}
    # hugetlb arrived in 2.35; in ``always`` mode large mappings are huge already, in ``never`` never.
    pages = {HUGETLB: "1"} if mode == "madvise" and glibc >= (2, 35) else {}
    return {**pages, **KEEP_HEAP}


def environment_with_tunables(environ: dict[str, str], helpful: dict[str, str]) -> dict[str, str] | None:
    """The environment to restart with, or None when a restart would change nothing.

    Only tunables the user has not set are added; nothing when the user opted out.
    """
    if environ.get(OPT_OUT_ENV, "") not in ("", "0"):
        return None
    present = tunables(environ)
    missing = [f"{name}={value}" for name, value in helpful.items() if name not in present]
    if not missing:
        return None
    return {**environ, "GLIBC_TUNABLES": ":".join(filter(None, [environ.get("GLIBC_TUNABLES", ""), *missing]))}


def restart_environment(environ: dict[str, str]) -> dict[str, str] | None:
    """``environment_with_tunables`` for this machine's kernel and glibc."""
    return environment_with_tunables(environ, helpful_tunables(thp_mode(), glibc_version()))


def restart_with_tunables() -> None:
    """Re-execute this Python process with the helpful tunables set, if any is missing; else return."""
    environ = restart_environment(dict(os.environ))
    if environ is None:
        return
    sys.stdout.flush()
    sys.stderr.flush()
    # orig_argv keeps the interpreter's own options (``-m lightnets_jax.cli``, ``-X ...``).
    os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], environ)


def heap_is_kept(environ: dict[str, str] | None = None) -> bool:
    present = tunables(os.environ if environ is None else environ)
    return all(present.get(name) == value for name, value in KEEP_HEAP.items())


def use_synchronous_dispatch_if_heap_kept() -> bool:
    """Run CPU computations on the calling thread when the heap settings are in effect.

    Must run before JAX creates its CPU client (the first computation); returns whether it did.
    """
    if not heap_is_kept():
        return False
    import jax

    jax.config.update("jax_cpu_enable_async_dispatch", False)
    return True


def describe(environ: dict[str, str] | None = None, mode: str | None = None) -> str:
    """What backs large allocations in this process, for benchmark records."""
    environ = os.environ if environ is None else environ
    mode = thp_mode() if mode is None else mode
    if mode == "always":
        pages = "huge pages (THP always)"
    elif mode == "madvise" and tunables(environ).get(HUGETLB) == "1":
        pages = f"huge pages ({HUGETLB}=1)"
    else:
        pages = f"4 KiB pages (THP {mode or 'unknown'})"
    heap = "heap kept (mmap_max=0)" if heap_is_kept(environ) else "large blocks mmapped"
    return f"malloc {pages}, {heap}"
