"""`vigie compact` next to a running server: closed days are rewritten into one file each, every
answer stays identical (checked against DuckDB over the sent reports), the server reads the
compacted files once the old ones are vacuumed, and the open format (deltalake, polars) gives the
same rows as Flight SQL. Retention removes exactly the expired days."""

import subprocess
import time
from collections import Counter

import adbc_driver_flightsql.dbapi as flightsql
import polars as pl
from deltalake import DeltaTable

from conftest import oracle_rows, simulate, vigie_bin

# 4 drones × 3,000 reports a minute apart: 2026-02-01 00:00 to 2026-02-03 02:00, three days.
FLEET = ["--drones", "4", "--reports-per-drone", "3000", "--seed", "11",
         "--start", "2026-02-01T00:00:00Z", "--batch", "200", "--rate", "4000"]

QUESTIONS = [
    ("SELECT CAST(day AS VARCHAR), count(*), sum(seq) FROM reports GROUP BY 1 ORDER BY 1",
     "SELECT CAST(CAST(time AT TIME ZONE 'UTC' AS DATE) AS VARCHAR), count(*), sum(seq) FROM dump "
     "GROUP BY 1 ORDER BY 1"),
    ("SELECT drone_id, count(*) FROM reports WHERE time >= '2026-02-02T10:00:00Z' "
     "AND time < '2026-02-02T11:00:00Z' GROUP BY drone_id ORDER BY drone_id",
     "SELECT drone_id, count(*) FROM dump WHERE time >= '2026-02-02T10:00:00Z' "
     "AND time < '2026-02-02T11:00:00Z' GROUP BY drone_id ORDER BY drone_id"),
    ("SELECT citizen, count(*) FROM sightings WHERE score < 20 GROUP BY citizen "
     "ORDER BY 2 DESC, 1 LIMIT 5",
     "SELECT c.name, count(*) FROM (SELECT unnest(citizens) AS c FROM dump) WHERE c.score < 20 "
     "GROUP BY 1 ORDER BY 2 DESC, 1 LIMIT 5"),
]


def rows(uri, sql):
    with flightsql.connect(uri) as conn, conn.cursor() as cur:
        cur.execute(sql)
        return [tuple(r) for r in cur.fetchall()]


def check(uri, dump):
    for vigie_sql, duck_sql in QUESTIONS:
        assert rows(uri, vigie_sql) == oracle_rows(dump, duck_sql), vigie_sql


def files_per_day(table_dir):
    uris = DeltaTable(str(table_dir)).file_uris()
    return Counter(next(part for part in u.split("/") if part.startswith("day=")) for u in uris)


def compact(data_dir, *args):
    out = subprocess.run([vigie_bin(), "compact", "--data-dir", str(data_dir), *args],
                         check=True, capture_output=True, text=True, timeout=300)
    return out.stdout


def test_compaction_and_retention_alongside_a_running_server(start_vigie, tmp_path):
    data = tmp_path / "data"
    vigie = start_vigie("--flush-rows", "1000", "--flush-interval", "500ms",
                        "--compact-interval", "0s", data_dir=data)
    dump = tmp_path / "fleet.jsonl"
    simulate(vigie.addr, *FLEET, "--dump", str(dump))
    time.sleep(1.5)  # the last rows reach Delta
    reports_dir = data / "lake" / "tenants" / "default" / "tables" / "reports"
    before = files_per_day(reports_dir)
    assert sorted(before) == ["day=2026-02-01", "day=2026-02-02", "day=2026-02-03"]
    assert before["day=2026-02-01"] > 2, before
    check(vigie.uri, dump)

    # Compaction while the server runs, deleting the old files at once.
    out = compact(data, "--vacuum-after", "0s")
    # (a day with one small file already is left alone)
    compacted = sum(n > 1 for n in before.values())
    assert f"default/reports: days_expired=0 days_compacted={compacted} " in out, (before, out)
    after = files_per_day(reports_dir)
    assert after == Counter({"day=2026-02-01": 1, "day=2026-02-02": 1, "day=2026-02-03": 1}), after
    time.sleep(1.5)  # the idle server refreshes to the compacted version
    check(vigie.uri, dump)

    # The open format: deltalake and polars read the rows Flight SQL returns.
    sql = "SELECT drone_id, seq FROM reports ORDER BY drone_id, seq"
    via_flight = rows(vigie.uri, sql)
    via_delta = DeltaTable(str(reports_dir)).to_pyarrow_table(columns=["drone_id", "seq"])
    assert sorted(zip(via_delta.column("drone_id").to_pylist(),
                      via_delta.column("seq").to_pylist())) == via_flight
    via_polars = pl.read_delta(str(reports_dir)).select("drone_id", "seq").sort("drone_id", "seq")
    assert list(via_polars.iter_rows()) == via_flight

    # Retention: the days that ended more than N days ago go, from every table.
    now = time.time()
    keep_days = int((now - time.mktime((2026, 2, 2, 0, 0, 0, 0, 0, 0))) // 86400)
    out = compact(data, "--vacuum-after", "0s", "--retention", f"{keep_days}d")
    assert "default/reports: days_expired=1" in out, out
    assert sorted(files_per_day(reports_dir)) == ["day=2026-02-02", "day=2026-02-03"]
    time.sleep(1.5)
    days = rows(vigie.uri, "SELECT DISTINCT CAST(day AS VARCHAR) FROM reports ORDER BY 1")
    assert days == [("2026-02-02",), ("2026-02-03",)]
    assert rows(vigie.uri, "SELECT count(*) FROM reports") == oracle_rows(
        dump, "SELECT count(*) FROM dump WHERE time >= '2026-02-02T00:00:00Z'")
