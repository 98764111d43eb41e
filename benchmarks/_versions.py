"""Run one benchmark on two versions of the code in the same session: a git ref ("before") and this tree ("after").

Ratios measured in the same run hold across machines; absolute seconds on a shared
2-core machine do not. ``compare(script, argv, before)`` checks ``before`` out in a
temporary git worktree, runs ``script --one-version`` once with each version first on
``PYTHONPATH`` (ahead of the editable install), and returns both JSON results.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Callable, Sequence

from _measure import log, machine

ROOT = Path(__file__).resolve().parents[1]


def git(*args: str) -> str:
    return subprocess.run(["git", "-C", str(ROOT), *args], check=True, capture_output=True, text=True).stdout.strip()


def run_version(script: str, argv: Sequence[str], source: Path, label: str) -> dict:
    """``script --one-version argv`` with ``source``'s fheestimators imported; its JSON stdout."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(source), os.environ.get("PYTHONPATH", "")])}
    log(f"{label}: {Path(script).name} on {source}")
    done = subprocess.run([sys.executable, script, "--one-version", *argv], env=env, stdout=subprocess.PIPE,
                          check=True, text=True)
    return json.loads(done.stdout)


def parser(description: str, **one_version) -> argparse.ArgumentParser:
    """A benchmark's command line: ``--before REF`` (what ``compare`` measures this tree against) and
    ``--one-version`` (a flag by default; ``one_version`` gives other argparse settings, e.g. a value)."""
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--before", default="HEAD", help="git ref of the code to compare with (default: HEAD)")
    parser.add_argument("--one-version", **(one_version or {"action": "store_true",
                                                            "help": "measure the imported code only"}))
    return parser


def compare(script: str, argv: Sequence[str], before: str) -> dict:
    """``{"before": {...}, "after": {...}}``: the benchmark on git ref ``before`` and on this tree."""
    commit = git("rev-parse", "--verify", f"{before}^{{commit}}")
    # the tree as the run starts: edits made while it runs are not what it measured
    after = git("rev-parse", "HEAD")
    if git("status", "--porcelain", "--untracked-files=no"):
        after += " + uncommitted changes"
    with tempfile.TemporaryDirectory(prefix="fheestimators-before-") as tmp:
        worktree = Path(tmp) / "before"
        git("worktree", "add", "--detach", str(worktree), commit)
        try:
            results = {"before": run_version(script, argv, worktree, "before"),
                       "after": run_version(script, argv, ROOT, "after")}
        finally:
            git("worktree", "remove", "--force", str(worktree))
    results["versions"] = {"before": commit, "after": after}
    return results


def report(script: str, argv: Sequence[str], before: str) -> None:
    """Print ``compare``'s results with the machine's facts, as a results file keeps them."""
    results = compare(script, argv, before)
    results["machine"] = machine()
    print(json.dumps(results, indent=2))


def main(description: str, script: str, one_version: Callable[[], dict], argv=None) -> None:
    """The command line of a benchmark with no options of its own: ``--one-version`` prints
    ``one_version()``; otherwise both versions are measured (``report``)."""
    args = parser(description).parse_args(argv)
    if args.one_version:
        print(json.dumps(one_version()))
    else:
        report(script, [], args.before)
