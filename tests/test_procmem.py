"""Process memory: RSS readers, cgroup limit detection from fake trees, malloc_trim."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from memcache_ext import _procmem
from memcache_ext._procmem import RssReader, cgroup_limit, memory_limit

GB = 2**30
PHYS = 16 * GB

linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux /proc")


def write(root: Path, rel: str, text: str) -> None:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


# -- RSS ----------------------------------------------------------------------


@linux_only
def test_statm_and_psutil_agree() -> None:
    statm = _procmem.read_rss_statm()
    ps = _procmem.read_rss_psutil()
    assert _procmem.rss_source() == "/proc/self/statm"
    assert statm > 1 * 2**20
    assert abs(statm - ps) < 16 * 2**20  # both are this process, read moments apart


@linux_only
def test_rss_grows_with_allocation() -> None:
    before = _procmem.rss_bytes()
    block = bytearray(64 * 2**20)
    block[::4096] = b"x" * len(block[::4096])  # touch every page
    after = _procmem.rss_bytes()
    assert after - before > 48 * 2**20
    del block


def test_rss_tuple() -> None:
    value, source = _procmem.rss()
    assert value > 0
    assert source in ("/proc/self/statm", "psutil")


def test_fake_statm_is_read(tmp_path: Path) -> None:
    write(tmp_path, "proc/self/statm", "1000 250 10 1 0 100 0\n")
    reader = RssReader(str(tmp_path))
    try:
        assert reader.source == "/proc/self/statm"
        assert reader.read() == 250 * _procmem.PAGE_SIZE
    finally:
        reader.close()


@pytest.mark.parametrize("content", ["", "garbage\n", "12\n", "a b c\n"])
def test_malformed_statm_falls_back_to_psutil(tmp_path: Path, content: str) -> None:
    write(tmp_path, "proc/self/statm", content)
    reader = RssReader(str(tmp_path))
    assert reader.source == "psutil"
    assert "malformed" in (reader.error or "")
    assert reader.read() > 0


def test_missing_statm_falls_back(tmp_path: Path) -> None:
    reader = RssReader(str(tmp_path))
    assert reader.source == "psutil"
    assert reader.read() > 0


def test_closed_fd_switches_to_psutil(tmp_path: Path) -> None:
    write(tmp_path, "proc/self/statm", "1000 250 10 1 0 100 0\n")
    reader = RssReader(str(tmp_path))
    assert reader._fd is not None
    os.close(reader._fd)  # the descriptor goes bad under the reader
    assert reader.read() > 0
    assert reader.source == "psutil"


@linux_only
def test_forked_child_reads_its_own_rss() -> None:
    code = textwrap.dedent("""
        import os
        from memcache_ext import _procmem
        parent = _procmem.rss_bytes()
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:
            block = bytearray(200 * 2**20)
            block[::4096] = b"x" * len(block[::4096])
            os.write(w, str(_procmem.rss_bytes()).encode())
            os._exit(0)
        os.waitpid(pid, 0)
        child = int(os.read(r, 100))
        assert child - parent > 150 * 2**20, (parent, child)
        assert _procmem.rss_bytes() - parent < 100 * 2**20
        print("ok")
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "ok"


# -- cgroup limit ---------------------------------------------------------------


def test_v2_limit(tmp_path: Path) -> None:
    write(tmp_path, "proc/self/cgroup", "0::/system.slice/app.service\n")
    write(tmp_path, "sys/fs/cgroup/system.slice/app.service/memory.max", "536870912\n")
    limit = memory_limit(root=str(tmp_path), physical=PHYS)
    assert limit.nbytes == 512 * 2**20
    assert limit.source.startswith("cgroup v2 ")
    assert limit.source.endswith("app.service/memory.max")
    assert limit.mb == 512


def test_v2_max_means_none(tmp_path: Path) -> None:
    write(tmp_path, "proc/self/cgroup", "0::/a\n")
    write(tmp_path, "sys/fs/cgroup/a/memory.max", "max\n")
    limit = memory_limit(root=str(tmp_path), physical=PHYS)
    assert limit.nbytes == PHYS
    assert limit.source == "physical memory (cgroup v2: no limit)"


def test_v2_ancestor_limit_applies(tmp_path: Path) -> None:
    write(tmp_path, "proc/self/cgroup", "0::/parent/child\n")
    write(tmp_path, "sys/fs/cgroup/parent/child/memory.max", "max\n")
    write(tmp_path, "sys/fs/cgroup/parent/memory.max", str(GB))
    assert cgroup_limit(str(tmp_path), PHYS)[0] == GB


def test_smallest_of_chain_wins(tmp_path: Path) -> None:
    write(tmp_path, "proc/self/cgroup", "0::/p/c\n")
    write(tmp_path, "sys/fs/cgroup/p/c/memory.max", str(2 * GB))
    write(tmp_path, "sys/fs/cgroup/p/memory.max", str(GB))
    limit, source = cgroup_limit(str(tmp_path), PHYS)
    assert limit == GB and source.endswith("/p/memory.max")


def test_v2_root_namespace(tmp_path: Path) -> None:
    # Inside a container with a cgroup namespace: "0::/" and memory.max at the mount root.
    write(tmp_path, "proc/self/cgroup", "0::/\n")
    write(tmp_path, "sys/fs/cgroup/memory.max", "268435456")
    assert memory_limit(root=str(tmp_path), physical=PHYS).nbytes == 256 * 2**20


def test_v1_limit(tmp_path: Path) -> None:
    write(tmp_path, "proc/self/cgroup", "5:cpu,cpuacct:/docker/abc\n4:memory:/docker/abc\n0::/\n")
    write(tmp_path, "sys/fs/cgroup/memory/docker/abc/memory.limit_in_bytes", str(GB))
    limit = memory_limit(root=str(tmp_path), physical=PHYS)
    assert limit.nbytes == GB
    assert limit.source.startswith("cgroup v1 ")


def test_v1_container_without_namespace(tmp_path: Path) -> None:
    # /proc/self/cgroup names the host path, but only the container's own
    # cgroup is mounted (at the controller root): the ancestor walk finds it.
    write(tmp_path, "proc/self/cgroup", "4:memory:/docker/abc\n")
    write(tmp_path, "sys/fs/cgroup/memory/memory.limit_in_bytes", str(GB))
    assert memory_limit(root=str(tmp_path), physical=PHYS).nbytes == GB


@pytest.mark.parametrize("value", ["9223372036854771712", str(2**60), str(PHYS + 1)])
def test_v1_unlimited_values(tmp_path: Path, value: str) -> None:
    write(tmp_path, "proc/self/cgroup", "4:memory:/\n")
    write(tmp_path, "sys/fs/cgroup/memory/memory.limit_in_bytes", value)
    limit = memory_limit(root=str(tmp_path), physical=PHYS)
    assert limit.nbytes == PHYS
    assert limit.source == "physical memory (cgroup v1: no limit)"


@pytest.mark.parametrize("content", ["lots\n", "", "-5\n", "0\n", "12.5\n"])
def test_malformed_limit_falls_back(tmp_path: Path, content: str) -> None:
    write(tmp_path, "proc/self/cgroup", "0::/a\n")
    write(tmp_path, "sys/fs/cgroup/a/memory.max", content)
    limit = memory_limit(root=str(tmp_path), physical=PHYS)
    assert limit.nbytes == PHYS
    assert "malformed" in limit.source and "physical memory" in limit.source


def test_malformed_file_but_valid_ancestor(tmp_path: Path) -> None:
    write(tmp_path, "proc/self/cgroup", "0::/a/b\n")
    write(tmp_path, "sys/fs/cgroup/a/b/memory.max", "nonsense")
    write(tmp_path, "sys/fs/cgroup/a/memory.max", str(GB))
    assert memory_limit(root=str(tmp_path), physical=PHYS).nbytes == GB


def test_binary_garbage_limit_file(tmp_path: Path) -> None:
    write(tmp_path, "proc/self/cgroup", "0::/a\n")
    write(tmp_path, "sys/fs/cgroup/a/memory.max", "")
    (tmp_path / "sys/fs/cgroup/a/memory.max").write_bytes(b"\xff\xfe\x00")
    limit = memory_limit(root=str(tmp_path), physical=PHYS)
    assert limit.nbytes == PHYS and "unreadable" in limit.source


def test_missing_proc_cgroup(tmp_path: Path) -> None:
    limit = memory_limit(root=str(tmp_path), physical=PHYS)
    assert limit.nbytes == PHYS
    assert "unreadable" in limit.source


def test_no_memory_controller_line(tmp_path: Path) -> None:
    write(tmp_path, "proc/self/cgroup", "3:cpu:/x\nnot a line\n")
    limit = memory_limit(root=str(tmp_path), physical=PHYS)
    assert limit.nbytes == PHYS and "names no memory cgroup" in limit.source


def test_missing_limit_file(tmp_path: Path) -> None:
    write(tmp_path, "proc/self/cgroup", "0::/a\n")
    limit = memory_limit(root=str(tmp_path), physical=PHYS)
    assert limit.nbytes == PHYS and "no memory.max" in limit.source


def test_limit_directory_instead_of_file(tmp_path: Path) -> None:
    write(tmp_path, "proc/self/cgroup", "0::/a\n")
    (tmp_path / "sys/fs/cgroup/a/memory.max").mkdir(parents=True)
    limit = memory_limit(root=str(tmp_path), physical=PHYS)
    assert limit.nbytes == PHYS and "unreadable" in limit.source


def test_path_traversal_in_cgroup_is_ignored(tmp_path: Path) -> None:
    write(tmp_path, "proc/self/cgroup", "0::/../../etc\n")
    write(tmp_path, "sys/fs/cgroup/etc/memory.max", str(GB))
    # ".." components are dropped, so the lookup stays under sys/fs/cgroup.
    assert cgroup_limit(str(tmp_path), PHYS)[0] == GB


def test_configured_limit_wins(tmp_path: Path) -> None:
    write(tmp_path, "proc/self/cgroup", "0::/\n")
    write(tmp_path, "sys/fs/cgroup/memory.max", str(GB))
    limit = memory_limit(123456, root=str(tmp_path))
    assert limit == (123456, "configured")


def test_real_system_limit_is_sane() -> None:
    limit = memory_limit()
    assert 0 < limit.nbytes <= max(_procmem.physical_memory(), limit.nbytes)
    assert limit.source


def test_physical_memory() -> None:
    assert _procmem.physical_memory() > 64 * 2**20


# -- malloc_trim ----------------------------------------------------------------


def test_malloc_trim_matches_platform() -> None:
    ran = _procmem.malloc_trim(0)
    assert ran is (_procmem.glibc_version() is not None)
