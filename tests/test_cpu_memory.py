import os
import subprocess
import sys

from lightnets_jax.cli import cpu_memory

KEEP_HEAP = "glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=68719476736"


def test_thp_mode_reads_the_bracketed_choice(tmp_path):
    mode_file = tmp_path / "enabled"
    mode_file.write_text("always [madvise] never\n")
    assert cpu_memory.thp_mode(mode_file) == "madvise"
    mode_file.write_text("[always] madvise never\n")
    assert cpu_memory.thp_mode(mode_file) == "always"
    assert cpu_memory.thp_mode(tmp_path / "missing") is None


def test_helpful_tunables_follow_the_kernel_and_glibc():
    assert cpu_memory.helpful_tunables("madvise", (2, 35)) == {
        "glibc.malloc.hugetlb": "1", "glibc.malloc.mmap_max": "0", "glibc.malloc.trim_threshold": str(64 << 30)}
    # Huge pages need glibc 2.35 and only help in madvise mode; the heap settings help everywhere.
    for mode, glibc in (("madvise", (2, 31)), ("always", (2, 39)), ("never", (2, 39)), (None, (2, 39))):
        assert cpu_memory.helpful_tunables(mode, glibc) == cpu_memory.KEEP_HEAP
    assert cpu_memory.helpful_tunables("madvise", None) == {}
    assert cpu_memory.helpful_tunables("madvise", (2, 17)) == {}


def test_environment_adds_only_missing_tunables():
    helpful = cpu_memory.helpful_tunables("madvise", (2, 35))
    env = cpu_memory.environment_with_tunables({"PATH": "/bin"}, helpful)
    assert env == {"PATH": "/bin", "GLIBC_TUNABLES": f"glibc.malloc.hugetlb=1:{KEEP_HEAP}"}
    # Other tunables are kept; a choice the user made is not overridden.
    kept = cpu_memory.environment_with_tunables(
        {"GLIBC_TUNABLES": "glibc.malloc.arena_max=2:glibc.malloc.hugetlb=0"}, helpful)
    assert kept["GLIBC_TUNABLES"] == f"glibc.malloc.arena_max=2:glibc.malloc.hugetlb=0:{KEEP_HEAP}"
    # Nothing missing (which also stops a second restart), opted out, or nothing helps.
    assert cpu_memory.environment_with_tunables(env, helpful) is None
    assert cpu_memory.environment_with_tunables({cpu_memory.OPT_OUT_ENV: "1"}, helpful) is None
    assert cpu_memory.environment_with_tunables({}, {}) is None


def test_describe_names_pages_and_heap():
    assert cpu_memory.describe({}, "always") == "malloc huge pages (THP always), large blocks mmapped"
    assert cpu_memory.describe({"GLIBC_TUNABLES": f"glibc.malloc.hugetlb=1:{KEEP_HEAP}"}, "madvise") == \
        "malloc huge pages (glibc.malloc.hugetlb=1), heap kept (mmap_max=0)"
    assert cpu_memory.describe({"GLIBC_TUNABLES": "glibc.malloc.mmap_max=0"}, "madvise") == \
        "malloc 4 KiB pages (THP madvise), large blocks mmapped"


def _run_python(code: str, env: dict[str, str], *args: str) -> str:
    return subprocess.run([sys.executable, "-c", code, *args], env=env, capture_output=True, text=True, timeout=60,
                          check=True).stdout.strip()


def test_restart_sets_the_tunables_once_and_keeps_the_command_line():
    code = ("import os, sys; from lightnets_jax.cli import cpu_memory; cpu_memory.restart_with_tunables(); "
            "print(os.environ.get('GLIBC_TUNABLES', ''), sys.argv[1:])")
    env = {k: v for k, v in os.environ.items() if k not in ("GLIBC_TUNABLES", cpu_memory.OPT_OUT_ENV)}
    restart = cpu_memory.restart_environment({})
    expected = restart["GLIBC_TUNABLES"] if restart else ""
    assert _run_python(code, env, "--flag", "x") == f"{expected} ['--flag', 'x']"


def test_synchronous_dispatch_follows_the_heap_settings():
    code = ("import jax; from lightnets_jax.cli import cpu_memory; "
            "print(cpu_memory.use_synchronous_dispatch_if_heap_kept(), jax.config.read('jax_cpu_enable_async_dispatch'))")
    env = {k: v for k, v in os.environ.items() if k != "GLIBC_TUNABLES"}
    assert _run_python(code, {**env, "GLIBC_TUNABLES": KEEP_HEAP}) == "True False"
    assert _run_python(code, env) == "False True"
