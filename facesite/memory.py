"""The memory of long-running processes: fewer malloc arenas, and where it goes, on request.

`limit_malloc_arenas`: glibc's malloc gives threads arenas of their own, up to eight per core, to
spare them its lock. A long-lived object allocated by one thread pins that arena's memory, so a
process of many threads holds more and more half-empty arenas: 1,500 uploads' S3 calls grew the
emulator (then moto's own server, a thread per connection) by 7.5 MiB with two arenas, by
11.8-17.9 MiB in three runs without (a noisy measure). Two arenas keep that bounded; its threads
mostly wait on I/O. The web tier's processes grew as little without the limit as with it
(bench.soak, 5 min: +0.5% and +0.6%), so it is not set there.

With FACESITE_MEMORY_TRACE_DIR set, `start_tracing` traces the process's Python allocations
(tracemalloc) and, every FACESITE_MEMORY_TRACE_SECONDS, collects garbage and appends to
`<dir>/<name>-<pid>.txt` the allocation sites that grew since the previous report, by bytes,
with their stacks. Under a steady load what a process keeps shows in every report, the warm-up
only in the first. Tracing costs CPU (the emulator serves about half as fast): it is for
profiling, never on by default.
"""

from __future__ import annotations

import ctypes
import gc
import os
import threading
import time
import tracemalloc

from facesite import config

# Frames kept per allocation: enough to see which library's call made it.
TRACE_DEPTH = 8
TOP_SITES = 25


def _ignored(snapshot: tracemalloc.Snapshot) -> tracemalloc.Snapshot:
    return snapshot.filter_traces([tracemalloc.Filter(False, tracemalloc.__file__)])


def report(baseline: tracemalloc.Snapshot, snapshot: tracemalloc.Snapshot) -> str:
    """What grew between the two snapshots: allocation sites by bytes, with their stacks."""
    lines = []
    total = sum(stat.size for stat in snapshot.statistics("filename"))
    first = sum(stat.size for stat in baseline.statistics("filename"))
    lines.append(f"traced {first / 2**20:.1f} -> {total / 2**20:.1f} MiB")
    for stat in snapshot.compare_to(baseline, "traceback")[:TOP_SITES]:
        if stat.size_diff <= 0:
            break
        lines.append(
            f"\n{stat.size_diff / 2**10:+9.0f} KiB {stat.count_diff:+8d} blocks "
            f"(now {stat.size / 2**10:.0f} KiB)"
        )
        lines.extend(f"    {line}" for line in stat.traceback.format(most_recent_first=True))
    return "\n".join(lines) + "\n"


# mallopt's parameter for the arena limit (glibc's malloc.h).
_M_ARENA_MAX = -8
MALLOC_ARENAS = 2


def limit_malloc_arenas() -> None:
    """At most MALLOC_ARENAS malloc arenas in this process and those it forks (call it before
    starting threads); nothing where the C library is not glibc."""
    mallopt = getattr(ctypes.CDLL(None), "mallopt", None)
    if mallopt is not None:
        mallopt(_M_ARENA_MAX, MALLOC_ARENAS)


def start_tracing(name: str) -> None:
    """Trace this process and report periodically, if the configuration asks for it."""
    settings = config.load()
    if settings.memory_trace_dir is None:
        return
    path = settings.memory_trace_dir / f"{name}-{os.getpid()}.txt"
    interval = settings.memory_trace_seconds
    tracemalloc.start(TRACE_DEPTH)

    def live() -> tracemalloc.Snapshot:
        gc.collect()  # garbage waiting for the collector is not kept
        return _ignored(tracemalloc.take_snapshot())

    def reports() -> None:
        previous = live()
        while True:
            time.sleep(interval)
            snapshot = live()
            with open(path, "a") as out:
                out.write(f"=== {time.strftime('%H:%M:%S')}\n{report(previous, snapshot)}\n")
            previous = snapshot

    threading.Thread(target=reports, name="memory-trace", daemon=True).start()
