"""Interleaved A/B of two `vigie` binaries on the history benchmark's queries.

Usage: .venv/bin/python bench/ab.py A B --data DIR/30d [--days 30] [--rounds 3] [--only 3,4]

DIR/30d is a dataset kept by `bench/history.py --keep DIR`. It is copied once (A and B then read
identical files from different directories), both servers run at the same time, and every round
times each query on A and on B (median of 5 after a warm-up), alternating which goes first.
Prints, per query, the median of the per-round ratios B/A and their range, then their geometric
mean. On a shared 2-core machine single runs vary 1.5x; only ratios this way are worth quoting,
and an A/A run (the same binary twice) shows the floor of the method (about ±7 %).

`--data-b DIR2/30d` gives B another dataset (B reads a copy of it): with the same binary as A and
B, this compares two file layouts, e.g. datasets written by two versions of the writer.
"""

import argparse
import math
import shutil
import statistics
import sys
import tempfile
from datetime import datetime
from pathlib import Path

import adbc_driver_flightsql.dbapi as flightsql

sys.path.insert(0, str(Path(__file__).parent))
import history  # noqa: E402


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("a")
    parser.add_argument("b")
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--data-b", type=Path,
                        help="B reads this dataset instead of a copy of --data (to compare file "
                             "layouts: the same binary twice, two datasets)")
    parser.add_argument("--days", type=int, default=30)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--only", default="", help="query numbers, e.g. 3,4")
    parser.add_argument("--start", default=history.START.strftime("%Y-%m-%dT%H:%M:%SZ"),
                        help="the dataset's first day (history.py's START unless it was changed)")
    args = parser.parse_args()
    history.START = datetime.strptime(args.start, "%Y-%m-%dT%H:%M:%S%z")
    only = {int(i) for i in args.only.split(",") if i}
    chosen = [(i, q) for i, q in enumerate(history.queries(args.days)) if not only or i in only]
    with tempfile.TemporaryDirectory() as tmp:
        copy = Path(tmp) / "b"
        shutil.copytree(args.data_b or args.data, copy)
        servers = [history.serve(args.a, args.data), history.serve(args.b, copy)]
        try:
            cursors = [flightsql.connect(f"grpc://{addr}").cursor() for _, addr in servers]
            times = {i: ([], []) for i, _ in chosen}
            for r in range(args.rounds):
                for i, (_, sql, _) in chosen:
                    for k in ((0, 1) if r % 2 == 0 else (1, 0)):
                        def run(c=cursors[k]):
                            c.execute(sql)
                            c.fetch_arrow_table()
                        times[i][k].append(history.timed(run))
            logs = []
            for i, (name, _, _) in chosen:
                a, b = times[i]
                ratios = [y / x for x, y in zip(a, b)]
                logs.append(math.log(statistics.median(ratios)))
                print(f"{i} {name:42s} A {statistics.median(a) * 1e3:7.1f} ms  "
                      f"B {statistics.median(b) * 1e3:7.1f} ms  B/A {statistics.median(ratios):.2f} "
                      f"[{min(ratios):.2f}–{max(ratios):.2f}]", flush=True)
            print(f"geometric mean B/A {math.exp(statistics.mean(logs)):.3f}")
            for c in cursors:
                c.close()
        finally:
            for proc, _ in servers:
                history.stop(proc)


if __name__ == "__main__":
    main()
