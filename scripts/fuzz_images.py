"""Fuzz the image loader for a chosen time, on demand, and say how many inputs were tried.

Runs the Hypothesis tests in ``tests/test_fuzz_images.py`` with ``GARBAGE_SORTER_FUZZ_SECONDS``
set, so each test repeats until its share of the time is used, then prints a table of inputs
tried, loaded and refused per test. CI runs the same tests for about a minute.

    python scripts/fuzz_images.py --minutes 10
    python scripts/fuzz_images.py --minutes 60 -k damaged_files   # one test only

Exit status: pytest's (0 when no input crashed or hung the loader). A failure prints the input
Hypothesis found and a ``@reproduce_failure`` line; keep it as a test in tests/test_images.py.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TESTS = ROOT / "tests" / "test_fuzz_images.py"
N_TESTS = 5  # the fuzz tests in TESTS; the time is shared out evenly


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=10.0, help="total time (default 10)")
    parser.add_argument(
        "-k", dest="select", help="only the tests matching this pytest -k expression"
    )
    args = parser.parse_args()
    share = args.minutes * 60 / (1 if args.select else N_TESTS)
    os.environ["GARBAGE_SORTER_FUZZ_SECONDS"] = str(share)

    import pytest

    started = time.monotonic()
    options = [str(TESTS), "-q", "-p", "no:cacheprovider", "--rootdir", str(ROOT)]
    status = pytest.main(options + (["-k", args.select] if args.select else []))
    stats = getattr(sys.modules.get("test_fuzz_images"), "STATS", {})
    print(f"\n{'test':<20} {'tried':>9} {'loaded':>8} {'refused':>8} {'seconds':>8} {'per s':>7}")
    totals = {"tried": 0, "loaded": 0, "refused": 0}
    for name, counts in stats.items():
        seconds = counts.get("seconds", 0) or float("nan")
        print(
            f"{name:<20} {counts['tried']:>9} {counts['loaded']:>8} {counts['refused']:>8} "
            f"{seconds:>8.0f} {counts['tried'] / seconds:>7.0f}"
        )
        for key in totals:
            totals[key] += counts[key]
    print(
        f"{'total':<20} {totals['tried']:>9} {totals['loaded']:>8} {totals['refused']:>8} "
        f"{time.monotonic() - started:>8.0f}"
    )
    print("no crash, no hang" if status == 0 else f"pytest exit status {status}: see above")
    return int(status)


if __name__ == "__main__":
    sys.exit(main())
