"""History benchmark (issue 6): analyst queries over 1 day and 30 days of reports, through Flight SQL
(ADBC) against `vigie serve`, and with DuckDB in-process on the same Parquet files.

Usage: .venv/bin/python bench/history.py [--drones N] [--days 1,30] [--bin target/release/vigie]
                                         [--keep DIR]
Writes a Markdown table to stdout. Each dataset: `vigie simulate` (WAL off) → graceful stop (final
flush) → `vigie compact --vacuum-after 0s` (every day is closed; removed files deleted, so the
Parquet glob DuckDB reads holds exactly the table's live files) → `vigie serve` again → queries.
Each query runs 3 times to warm up, then 11 times; the median is reported.
"""

import argparse
import warnings
import math
import os
import statistics
import subprocess
import tempfile
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import adbc_driver_flightsql.dbapi as flightsql
import duckdb

START = datetime(2026, 3, 1, tzinfo=timezone.utc)
warnings.filterwarnings("ignore", message="Cannot disable autocommit")


def queries(days: int):
    """(name, Vigie SQL, DuckDB SQL); DuckDB's `reports`/`alerts` are views over the files."""
    mid = START + timedelta(days=days // 2, hours=13)
    hour_end = mid + timedelta(hours=1)
    day = (START + timedelta(days=days // 2)).date()
    t0, t1 = mid.strftime("%Y-%m-%dT%H:%M:%SZ"), hour_end.strftime("%Y-%m-%dT%H:%M:%SZ")
    citizen = "Ana Martin"
    sightings = ("(SELECT drone_id, seq, time, latitude, longitude, c.name AS citizen, "
                 "c.score AS score FROM (SELECT *, unnest(citizens) AS c FROM reports))")
    return [
        ("1-hour window, one drone",
         f"SELECT seq, time, latitude, longitude FROM reports WHERE drone_id = 'drone-00042' "
         f"AND time >= '{t0}' AND time < '{t1}' ORDER BY seq",
         f"SELECT seq, time, latitude, longitude FROM reports WHERE drone_id = 'drone-00042' "
         f"AND time >= '{t0}' AND time < '{t1}' ORDER BY seq"),
        ("per-hour counts, one day",
         f"SELECT date_trunc('hour', time) AS h, count(*) FROM reports WHERE day = DATE '{day}' "
         "GROUP BY 1 ORDER BY 1",
         f"SELECT date_trunc('hour', time) AS h, count(*) FROM reports WHERE day = DATE '{day}' "
         "GROUP BY 1 ORDER BY 1"),
        ("per-hour counts, one day (rollup)",
         f"SELECT hour, sum(reports) FROM reports_hourly WHERE day = DATE '{day}' "
         "GROUP BY 1 ORDER BY 1",
         f"SELECT hour, sum(reports) FROM hourly WHERE day = DATE '{day}' GROUP BY 1 ORDER BY 1"),
        ("top low-score citizens, all history",
         "SELECT citizen, count(*) AS n FROM sightings WHERE score < 20 "
         "GROUP BY citizen ORDER BY n DESC, citizen LIMIT 10",
         f"SELECT citizen, count(*) AS n FROM {sightings} WHERE score < 20 "
         "GROUP BY citizen ORDER BY n DESC, citizen LIMIT 10"),
        ("where was citizen X seen (alerts)",
         f"SELECT drone_id, time, latitude, longitude FROM alerts WHERE citizen = '{citizen}' "
         "ORDER BY time",
         f"SELECT drone_id, time, latitude, longitude FROM alerts WHERE citizen = '{citizen}' "
         "ORDER BY time"),
        ("where was citizen X seen (all sightings)",
         f"SELECT count(*), min(time), max(time) FROM sightings WHERE citizen = '{citizen}'",
         f"SELECT count(*), min(time), max(time) FROM {sightings} WHERE citizen = '{citizen}'"),
        ("words near alerts",
         "SELECT w, count(*) AS n FROM (SELECT unnest(r.words) AS w FROM reports r "
         "JOIN alerts a ON r.drone_id = a.drone_id AND r.seq = a.seq) GROUP BY w ORDER BY n DESC, w",
         "SELECT w, count(*) AS n FROM (SELECT unnest(r.words) AS w FROM reports r "
         "JOIN alerts a ON r.drone_id = a.drone_id AND r.seq = a.seq) GROUP BY w ORDER BY n DESC, w"),
        ("reports per drone, all history",
         "SELECT drone_id, count(*) FROM reports GROUP BY drone_id ORDER BY drone_id",
         "SELECT drone_id, count(*) FROM reports GROUP BY drone_id ORDER BY drone_id"),
        ("alerts per rule per day",
         "SELECT day, rule, count(*) FROM alerts GROUP BY day, rule ORDER BY day, rule",
         "SELECT day, rule, count(*) FROM alerts GROUP BY day, rule ORDER BY day, rule"),
        ("area box, one hour",
         f"SELECT count(*) FROM reports WHERE latitude BETWEEN 48.85 AND 48.86 "
         f"AND longitude BETWEEN 2.33 AND 2.36 AND time >= '{t0}' AND time < '{t1}'",
         f"SELECT count(*) FROM reports WHERE latitude BETWEEN 48.85 AND 48.86 "
         f"AND longitude BETWEEN 2.33 AND 2.36 AND time >= '{t0}' AND time < '{t1}'"),
    ]


def serve(binary, data, *extra):
    proc = subprocess.Popen([binary, "serve", "--data-dir", str(data), "--grpc-addr", "127.0.0.1:0",
                             "--compact-interval", "0s", *extra],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    line = proc.stdout.readline().strip()
    return proc, line.split("://", 1)[1]


def stop(proc):
    proc.terminate()
    proc.wait(timeout=600)


def timed(run, warmup=3, repeat=11):
    # A freshly started server's first few queries pay for its warm-up (first runs of code paths,
    # the allocator taking pages from the OS, metadata caches): 5-17 ms instead of 3.5 ms for the
    # 1-hour window. Three warm-up runs and the median of eleven measure the steady cost, for
    # DuckDB alike.
    for _ in range(warmup):
        run()
    samples = []
    for _ in range(repeat):
        began = time.perf_counter()
        run()
        samples.append(time.perf_counter() - began)
    return statistics.median(samples)


def dataset(binary, root: Path, drones: int, days: int):
    data = root / f"{days}d"
    proc, addr = serve(binary, data, "--wal", "off", "--flush-rows", "2000000")
    out = subprocess.run([binary, "simulate", "--target", addr, "--drones", str(drones),
                          "--reports-per-drone", str(days * 1440), "--seed", "6",
                          "--start", START.strftime("%Y-%m-%dT%H:%M:%SZ"), "--batch", "2000",
                          "--streams", "2"], check=True, capture_output=True, text=True).stdout
    stop(proc)
    fields = dict(kv.split("=", 1) for kv in out.split())
    subprocess.run([binary, "compact", "--data-dir", str(data), "--vacuum-after", "0s"],
                   check=True, capture_output=True)
    # Write the dataset out before timing: otherwise the kernel's writeback of the files just
    # written and deleted (~0.5 GB at 30 days) overlaps the first queries of both engines.
    os.sync()
    return data, int(fields["accepted"]), int(fields["proto_bytes"])


def run(binary, root, drones, days):
    data, reports, proto_bytes = dataset(binary, root, drones, days)
    tables = data / "lake" / "tenants" / "default" / "tables"
    stored = sum(f.stat().st_size for f in (tables / "reports").rglob("*.parquet"))
    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    for name, table in [("reports", "reports"), ("alerts", "alerts"), ("hourly", "reports_hourly")]:
        con.execute(f"CREATE VIEW {name} AS SELECT * FROM read_parquet("
                    f"'{tables / table}/day=*/*.parquet', hive_partitioning = true, "
                    f"hive_types = {{'day': DATE}})")
    proc, addr = serve(binary, data)
    results = []
    try:
        conn = flightsql.connect(f"grpc://{addr}")
        cur = conn.cursor()
        for name, vigie_sql, duck_sql in queries(days):
            def vigie():
                cur.execute(vigie_sql)
                return cur.fetch_arrow_table()

            def duck():
                return con.sql(duck_sql).to_arrow_table()

            assert vigie().num_rows == duck().num_rows, name
            results.append((name, timed(vigie), timed(duck)))
        conn.close()
    finally:
        stop(proc)
    files = len(list((tables / "reports").rglob("*.parquet")))
    return {"reports": reports, "proto_bytes": proto_bytes, "stored": stored, "files": files,
            "results": results}


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--drones", type=int, default=100)
    parser.add_argument("--days", default="1,30")
    parser.add_argument("--bin", default=os.path.join(os.environ.get("CARGO_TARGET_DIR", "target"),
                                                      "release", "vigie"))
    parser.add_argument("--keep", type=Path,
                        help="make the datasets under this directory and keep them (for bench/ab.py)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = args.keep or Path(tmp)
        root.mkdir(parents=True, exist_ok=True)
        runs = {int(d): run(args.bin, root, args.drones, int(d)) for d in args.days.split(",")}
    for days, r in runs.items():
        print(f"\n### {days} day(s): {r['reports']:,} reports, {r['files']} reports files, "
              f"{r['stored'] / r['reports']:.1f} stored bytes/report "
              f"(protobuf {r['proto_bytes'] / r['reports']:.1f})\n")
        print("| query | Vigie (Flight SQL) ms | DuckDB (in-process) ms | ratio |")
        print("|---|---|---|---|")
        for name, v, d in r["results"]:
            print(f"| {name} | {v * 1000:.1f} | {d * 1000:.1f} | {v / d:.2f} |")
        geo = math.exp(statistics.mean(math.log(v / d) for _, v, d in r["results"]))
        print(f"\ngeometric mean of the ratios: **{geo:.2f}×** DuckDB")
    if len(runs) > 1:
        first, last = min(runs), max(runs)
        w1 = runs[first]["results"][0][1]
        w2 = runs[last]["results"][0][1]
        print(f"\n1-hour window, one drone: {w1 * 1000:.1f} ms at {first} day(s), "
              f"{w2 * 1000:.1f} ms at {last} days: **{w2 / w1:.2f}×**")


if __name__ == "__main__":
    main()
