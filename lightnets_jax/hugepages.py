"""Back XLA's large CPU buffers with transparent huge pages (glibc's ``malloc.hugetlb`` tunable).

XLA on CPU allocates each step's activations and gradients afresh, and glibc serves buffers
this large with new ``mmap`` regions that the kernel must fault in and zero page by page, then
returns to the system when the step frees them. On a kernel whose transparent huge pages are
in ``madvise`` mode (the common default) that happens in 4 KiB pages: for a MobileNetV2
training step at batch 128 about 430,000 page faults and 0.6-2.8 s of kernel time per step.
With ``GLIBC_TUNABLES=glibc.malloc.hugetlb=1`` glibc asks for 2 MiB pages instead
(docs/performance.md has the numbers). Tunables are read when a process starts, so the
``lightnets`` command restarts itself once with the tunable set; code that imports the
library sets it in its own environment (see the README).
"""

from __future__ import annotations

import os
import platform
import sys
from pathlib import Path

TUNABLE = "glibc.malloc.hugetlb"
SETTING = f"{TUNABLE}=1"
# Set to 1 to keep the command from restarting itself (e.g. under a debugger or a profiler).
OPT_OUT_ENV = "LIGHTNETS_NO_HUGEPAGES"
THP_MODE_FILE = Path("/sys/kernel/mm/transparent_hugepage/enabled")


def thp_mode(mode_file: Path = THP_MODE_FILE) -> str | None:
    """The kernel's transparent-huge-page mode (``always``, ``madvise``, ``never``), None if unknown."""
    try:
        text = mode_file.read_text()
    except OSError:
        return None
    start, end = text.find("["), text.find("]")
    return text[start + 1:end] if 0 <= start < end else None


def _glibc_supports_tunable() -> bool:
    libc, version = platform.libc_ver()
    if libc != "glibc":
        return False
    try:
        major, minor = (int(part) for part in version.split(".")[:2])
    except ValueError:
        return False
    return (major, minor) >= (2, 35)  # malloc.hugetlb first shipped in glibc 2.35


def _hugetlb_value(environ: dict[str, str]) -> str | None:
    """The ``malloc.hugetlb`` value in ``GLIBC_TUNABLES`` (``name=value`` pairs joined by ``:``)."""
    for item in environ.get("GLIBC_TUNABLES", "").split(":"):
        name, _, value = item.partition("=")
        if name == TUNABLE:
            return value
    return None


def environment_with_hugepages(environ: dict[str, str], mode: str | None) -> dict[str, str] | None:
    """The environment to restart with, or None when a restart would change nothing.

    Nothing to do when the user opted out or already chose a ``malloc.hugetlb`` value, or when
    the kernel's mode makes the tunable moot (``always``: every large mapping is huge already;
    ``never``: no huge pages at all).
    """
    if environ.get(OPT_OUT_ENV, "") not in ("", "0") or mode != "madvise":
        return None
    if _hugetlb_value(environ) is not None:
        return None
    tunables = environ.get("GLIBC_TUNABLES", "")
    return {**environ, "GLIBC_TUNABLES": f"{tunables}:{SETTING}" if tunables else SETTING}


def describe(environ: dict[str, str] | None = None, mode: str | None = None) -> str:
    """What backs large allocations in this process, for benchmark records."""
    environ = os.environ if environ is None else environ
    mode = thp_mode() if mode is None else mode
    if mode == "always":
        return "malloc huge pages (THP always)"
    if mode == "madvise" and _hugetlb_value(environ) == "1":
        return f"malloc huge pages ({SETTING})"
    return f"malloc 4 KiB pages (THP {mode or 'unknown'})"


def restart_environment(environ: dict[str, str]) -> dict[str, str] | None:
    """``environment_with_hugepages`` for this machine: None off Linux or below glibc 2.35."""
    if sys.platform != "linux" or not _glibc_supports_tunable():
        return None
    return environment_with_hugepages(environ, thp_mode())


def restart_with_hugepages() -> None:
    """Re-execute this Python process with the tunable set, if that can help; else return."""
    environ = restart_environment(dict(os.environ))
    if environ is None:
        return
    sys.stdout.flush()
    sys.stderr.flush()
    # orig_argv keeps the interpreter's own options (``-m lightnets_jax.cli``, ``-X ...``).
    os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], environ)
