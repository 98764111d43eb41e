"""The test suite's time (the README's test command): before and after a change, same run, one after the other.

Each version runs ``python -m pytest -q -p no:cacheprovider --durations=0`` from its own
tree (its tests, its conftest, its package), as CI does on 2 cores. Recorded: pytest's
outcome line, wall seconds, the CPU seconds of pytest and every process it waited for
(workers, services, subprocesses), the sum of the tests' durations by kind (call, setup,
teardown) and per file, the 30 slowest, and the load average before and after: the
machine may be shared, and the two versions run at different moments of its load.

Run: ``python benchmarks/suite_time.py [--before REF] [tests/...] > results_suite_time.json``
(``REF``, default ``HEAD``; the paths, default the whole suite; 7-15 minutes per version on 2 cores).
"""
from __future__ import annotations

import json
import os
import re
import resource
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _measure import log  # noqa: E402
from _versions import compare, parser as versions_parser  # noqa: E402

DURATION = re.compile(r"^([\d.]+)s (call|setup|teardown)\s+(\S+)")
OUTCOME = re.compile(r"^=*\s*(\d+ (?:passed|failed).*) in ([\d.]+)s")


def summarize(output: str) -> dict:
    """The outcome line and the summed durations of a ``--durations=0`` run's output."""
    by_kind, by_file, tests = Counter(), Counter(), Counter()
    outcome, pytest_seconds = None, None
    for line in output.splitlines():
        if match := DURATION.match(line):
            seconds, kind, test = float(match[1]), match[2], match[3]
            by_kind[kind] += seconds
            by_file[test.split("::")[0]] += seconds
            tests[test] += seconds
        elif match := OUTCOME.match(line):
            outcome, pytest_seconds = match[1].strip(" ="), float(match[2])
    return {
        "outcome": outcome,
        "pytest_seconds": pytest_seconds,
        "durations_sum_s": round(sum(by_kind.values()), 1),
        "durations_by_kind_s": {kind: round(seconds, 1) for kind, seconds in by_kind.items()},
        "durations_by_file_s": {name: round(seconds, 1) for name, seconds in by_file.most_common()},
        "slowest_tests_s": {name: round(seconds, 2) for name, seconds in tests.most_common(30)},
    }


def one_version(paths: list[str]) -> dict:
    import fheestimators

    root = Path(fheestimators.__file__).resolve().parents[1]  # the tree whose package is imported
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    load_before, start = os.getloadavg(), time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--durations=0", *paths],
                          cwd=root, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    wall, load_after = time.perf_counter() - start, os.getloadavg()
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    log(f"{root}: exit {done.returncode} in {wall:.0f} s")
    return {
        "tree": str(root),
        "exit_status": done.returncode,
        "wall_s": round(wall, 1),
        "cpu_user_s": round(after.ru_utime - before.ru_utime, 1),
        "cpu_sys_s": round(after.ru_stime - before.ru_stime, 1),
        "load_average_before": [round(x, 2) for x in load_before],
        "load_average_after": [round(x, 2) for x in load_after],
        **summarize(done.stdout),
    }


def main(argv=None) -> None:
    parser = versions_parser(__doc__)
    parser.add_argument("paths", nargs="*", help="test files or folders (default: the whole suite)")
    args = parser.parse_args(argv)
    if args.one_version:
        print(json.dumps(one_version(args.paths)))
        return
    results = compare(__file__, args.paths, args.before)
    results["cpu_count"] = os.cpu_count()
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
