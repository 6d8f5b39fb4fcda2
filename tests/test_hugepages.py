import os
import subprocess
import sys

from lightnets_jax import hugepages


def test_thp_mode_reads_the_bracketed_choice(tmp_path):
    mode_file = tmp_path / "enabled"
    mode_file.write_text("always [madvise] never\n")
    assert hugepages.thp_mode(mode_file) == "madvise"
    mode_file.write_text("[always] madvise never\n")
    assert hugepages.thp_mode(mode_file) == "always"
    assert hugepages.thp_mode(tmp_path / "missing") is None


def test_environment_adds_the_tunable_only_where_it_helps():
    env = hugepages.environment_with_hugepages({"PATH": "/bin"}, "madvise")
    assert env == {"PATH": "/bin", "GLIBC_TUNABLES": "glibc.malloc.hugetlb=1"}
    # Other tunables are kept; a choice the user made is not overridden.
    kept = hugepages.environment_with_hugepages({"GLIBC_TUNABLES": "glibc.malloc.arena_max=2"}, "madvise")
    assert kept["GLIBC_TUNABLES"] == "glibc.malloc.arena_max=2:glibc.malloc.hugetlb=1"
    assert hugepages.environment_with_hugepages({"GLIBC_TUNABLES": "glibc.malloc.hugetlb=0"}, "madvise") is None
    # Opted out, or the kernel's mode makes the tunable moot.
    assert hugepages.environment_with_hugepages({hugepages.OPT_OUT_ENV: "1"}, "madvise") is None
    assert hugepages.environment_with_hugepages({}, "always") is None
    assert hugepages.environment_with_hugepages({}, "never") is None
    assert hugepages.environment_with_hugepages({}, None) is None


def test_describe_names_what_backs_large_allocations():
    assert hugepages.describe({}, "always") == "malloc huge pages (THP always)"
    assert hugepages.describe({"GLIBC_TUNABLES": "glibc.malloc.hugetlb=1"}, "madvise") == \
        "malloc huge pages (glibc.malloc.hugetlb=1)"
    assert hugepages.describe({}, "madvise") == "malloc 4 KiB pages (THP madvise)"


def test_restart_sets_the_tunable_once_and_keeps_the_command_line():
    code = ("import os, sys; from lightnets_jax import hugepages; hugepages.restart_with_hugepages(); "
            "print(os.environ.get('GLIBC_TUNABLES', ''), sys.argv[1:])")
    env = {k: v for k, v in os.environ.items() if k not in ("GLIBC_TUNABLES", hugepages.OPT_OUT_ENV)}
    out = subprocess.run([sys.executable, "-c", code, "--flag", "x"], env=env, capture_output=True, text=True, timeout=60,
                         check=True).stdout.strip()
    restarted = hugepages.restart_environment({}) is not None
    assert out == ("glibc.malloc.hugetlb=1" if restarted else "") + " ['--flag', 'x']"
