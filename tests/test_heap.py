"""The render processes' heap settings, each observed in a fresh interpreter
(an arena, once made, lives as long as its process)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

from compositor import heap

pytestmark = pytest.mark.skipif(heap._glibc() is None, reason="glibc's malloc only")


def run_python(script: str, *args: str) -> str:
    # glibc's own settings from the environment (a Dask nanny sets some) would change what is observed.
    env = {name: value for name, value in os.environ.items() if not name.startswith("MALLOC_")}
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(script), *args],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
        env=env,
    )
    return done.stdout + done.stderr


THREADS_THAT_MALLOC = """
    import ctypes, sys, threading
    from compositor.heap import use_one_malloc_arena
    if sys.argv[-1] == "one":
        assert use_one_malloc_arena()
    barrier = threading.Barrier(4)
    def work():
        barrier.wait()  # all four alive at once, so none reuses another's arena
        kept = [bytearray(200_000) for _ in range(20)]
    threads = [threading.Thread(target=work) for _ in range(4)]
    for thread in threads: thread.start()
    for thread in threads: thread.join()
    ctypes.CDLL(None).malloc_stats()  # one "Arena N:" paragraph per arena, on stderr
"""


def test_threads_get_arenas_of_their_own_by_default() -> None:
    assert "Arena 1:" in run_python(THREADS_THAT_MALLOC)


def test_one_malloc_arena_is_shared_by_every_thread() -> None:
    report = run_python(THREADS_THAT_MALLOC, "one")
    assert "Arena 0:" in report
    assert "Arena 1:" not in report


def test_release_free_heap_hands_freed_pages_back() -> None:
    report = run_python(
        """
        import ctypes
        from compositor.heap import release_free_heap
        libc = ctypes.CDLL(None)
        libc.malloc.restype = ctypes.c_void_p
        libc.free.argtypes = [ctypes.c_void_p]
        def rss_mb():
            return int(open("/proc/self/statm").read().split()[1]) * 4096 // 2**20
        libc.free(libc.malloc(16 << 20))  # freeing a mapped block raises malloc's mmap threshold past 4 MiB
        blocks = [libc.malloc(4 << 20) for _ in range(20)]
        for block in blocks:
            ctypes.memset(block, 1, 4 << 20)
        for block in blocks[:-1]:  # the last one keeps the heap's top in use, so free() trims nothing
            libc.free(block)
        before = rss_mb()
        assert release_free_heap()
        print(before, rss_mb())
        """
    )
    before, after = map(int, report.split())
    assert before - after >= 60  # 19 blocks of 4 MiB were free
