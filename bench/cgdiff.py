#!/usr/bin/env python3
"""Per-request cost of each function between two callgrind runs of one binary.

bench/callgrind.sh leaves callgrind-<row>-0.out (no requests) and callgrind-<row>-<N>.out (N
requests) in its work directory. The difference of the two, over N, is what one request costs,
function by function, start-up subtracted. Subtracting two runs of the *same* binary with the
same N shows where run-to-run noise lives (that is how quanta's calibration loop was found).

    bench/cgdiff.py /tmp/pgw-callgrind/callgrind-gateway-0.out \
                    /tmp/pgw-callgrind/callgrind-gateway-2000.out 2000 [--inclusive] [--top 40]
"""
import argparse
import re
import subprocess
import sys

LINE = re.compile(r"^\s*([0-9][0-9,]*)\s+(?:\([^)]*\)\s+)?(.*)$")


def load(path, inclusive):
    out = subprocess.run(
        ["callgrind_annotate", f"--inclusive={'yes' if inclusive else 'no'}", "--auto=no",
         "--threshold=100", path],
        capture_output=True, text=True, check=True).stdout
    costs, total = {}, None
    for line in out.splitlines():
        m = LINE.match(line)
        if not m:
            continue
        value, name = int(m.group(1).replace(",", "")), m.group(2)
        if "PROGRAM TOTALS" in name:
            total = value
        elif ":" in name:
            costs[name] = costs.get(name, 0) + value
    return total, costs


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("base", help="the run with fewer requests (usually N=0)")
    p.add_argument("loaded", help="the run with N more requests")
    p.add_argument("n", type=int, help="requests between the two runs")
    p.add_argument("--inclusive", action="store_true", help="costs including callees")
    p.add_argument("--top", type=int, default=40)
    a = p.parse_args()
    if a.n <= 0:
        sys.exit("cgdiff.py: n must be a positive number of requests")
    t0, base = load(a.base, a.inclusive)
    t1, loaded = load(a.loaded, a.inclusive)
    if t0 is not None and t1 is not None:
        print(f"program total per request: {(t1 - t0) / a.n:.0f}")
    rows = sorted(((loaded.get(k, 0) - base.get(k, 0)) / a.n, k) for k in set(base) | set(loaded))
    rows.sort(key=lambda r: -abs(r[0]))
    for value, name in rows[:a.top]:
        print(f"{value:10.0f}  {name[:160]}")


if __name__ == "__main__":
    main()
