"""What the service's per-address penalty costs in memory and time, in-process, up to a crowd of addresses.

``Penalties`` (fixed windows of the ``limits`` library, in memory) with the default
limits: refusals from N distinct addresses, one each. Printed per N: the counts kept
(at most ``--max-address-counts``), the memory they hold (tracemalloc), microseconds per
counted refusal and per check of an address (the check every request pays), and the
memory left once the window has ended; and, first, the process's resident memory as one
table sees up to a million addresses. Also the library's own moving-window strategy,
measured and not used.

Run: ``python benchmarks/penalty_memory.py > benchmarks/results_penalty_memory.json`` (about three minutes).
"""
from __future__ import annotations

import gc
import json
import sys
import time
import tracemalloc
from pathlib import Path

from limits import RateLimitItemPerSecond
from limits.storage import MemoryStorage
from limits.strategies import MovingWindowRateLimiter

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _measure import log, machine  # noqa: E402

from fheestimators.deployment.service import Limits  # noqa: E402
from fheestimators.deployment.service.penalties import Penalties  # noqa: E402

WINDOW_S = 30  # longer than counting the largest crowd takes under tracemalloc


def address(i: int) -> str:
    return f"2001:db8:{i >> 16:x}:{i & 0xFFFF:x}::/64"


def crowd(n: int) -> dict:
    """``n`` addresses refused once each, then the window left to end: timed, then traced."""
    penalties = Penalties(Limits(address_window_s=WINDOW_S))
    start = time.perf_counter()
    for i in range(n):
        penalties.refused(address(i))
    refused_us = (time.perf_counter() - start) / n * 1e6
    start = time.perf_counter()
    for i in range(n):
        penalties.retry_after(address(i))
    check_us = (time.perf_counter() - start) / n * 1e6
    del penalties
    gc.collect()
    tracemalloc.start()  # a second table: tracemalloc slows every allocation
    penalties = Penalties(Limits(address_window_s=WINDOW_S))
    for i in range(n):
        penalties.refused(address(i))
    held, kept = tracemalloc.get_traced_memory()[0], penalties.counts
    time.sleep(WINDOW_S + 0.5)
    penalties.refused("192.0.2.1")  # any refusal starts the storage's sweep of ended windows
    time.sleep(0.5)
    after = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    return {"addresses": n, "counts_kept": kept, "memory_mb": round(held / 2**20, 2),
            "bytes_per_count": round(held / max(kept, 1)), "us_per_refusal": round(refused_us, 2),
            "us_per_check": round(check_us, 2), "counts_after_the_window": penalties.counts,
            "memory_after_the_window_mb": round(after / 2**20, 2)}


def resident(crowds: tuple) -> list:
    """One table, ever more addresses: the process's resident memory grows no further once it is full."""
    def rss_mb() -> float:
        status = Path("/proc/self/status").read_text().splitlines()
        return next(int(line.split()[1]) / 1024 for line in status if line.startswith("VmRSS:"))
    penalties = Penalties(Limits())
    penalties.refused("192.0.2.1")
    time.sleep(0.1)
    start, rows = rss_mb(), []
    for k, n in enumerate(crowds):
        for i in range(n):
            penalties.refused(f"{address(i)}-{k}")
        rows.append({"addresses": n, "counts_kept": penalties.counts, "resident_growth_mb": round(rss_mb() - start, 1)})
    return rows


def moving_window(n: int) -> dict:
    """The library's moving window on the same crowd: its sweep keeps every address's (empty) list."""
    storage = MemoryStorage()
    windows, item = MovingWindowRateLimiter(storage), RateLimitItemPerSecond(10, WINDOW_S)
    for i in range(n):
        windows.hit(item, address(i))
    time.sleep(WINDOW_S + 0.5)
    windows.hit(item, "192.0.2.1")
    time.sleep(0.5)
    return {"addresses": n, "keys_left_after_the_window": len(storage.events)}


def main() -> None:
    results = {"machine": machine(), "limits": {name: getattr(Limits(), name) for name in (
        "address_window_s", "max_address_refusals", "max_address_uploads", "max_address_counts")},
               "window_s_here": WINDOW_S}
    log("resident memory, up to a million addresses")  # first: later tables would reuse freed memory
    results["resident"] = resident((1_000, 8_192, 100_000, 1_000_000))
    results["crowds"] = []
    for n in (1_000, 8_192, 100_000):
        log(f"{n} addresses")
        results["crowds"].append(crowd(n))
    log("moving window, 20,000 addresses")
    results["moving_window"] = moving_window(20_000)
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
