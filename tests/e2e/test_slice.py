"""The vertical slice end to end: `vigie simulate` → `vigie serve` → ADBC Flight SQL, checked
against DuckDB over the very reports that were sent, and the Delta table read by `deltalake`."""

import adbc_driver_flightsql.dbapi as flightsql
import pytest
from deltalake import DeltaTable

from conftest import oracle_rows, simulate

FLEET = ["--drones", "40", "--reports-per-drone", "150", "--seed", "42",
         "--start", "2026-03-01T23:00:00Z", "--batch", "250"]

# The same questions asked of Vigie and of DuckDB: (Vigie SQL, DuckDB SQL over `dump`).
QUESTIONS = [
    ("SELECT count(*), count(DISTINCT drone_id), sum(cardinality(citizens)) FROM reports",
     "SELECT count(*), count(DISTINCT drone_id), sum(len(citizens)) FROM dump"),
    ("SELECT drone_id, count(*), sum(seq), min(time), max(time) FROM reports "
     "GROUP BY drone_id ORDER BY drone_id",
     "SELECT drone_id, count(*), sum(seq), min(time), max(time) FROM dump "
     "GROUP BY drone_id ORDER BY drone_id"),
    ("SELECT CAST(day AS VARCHAR) AS d, count(*) FROM reports GROUP BY d ORDER BY d",
     "SELECT CAST(CAST(time AT TIME ZONE 'UTC' AS DATE) AS VARCHAR), count(*) FROM dump "
     "GROUP BY 1 ORDER BY 1"),
    ("SELECT count(*), round(avg(score), 6), round(min(score), 6) FROM sightings WHERE score < 20",
     "SELECT count(*), round(avg(c.score), 6), round(min(c.score), 6) "
     "FROM (SELECT unnest(citizens) AS c FROM dump) WHERE c.score < 20"),
    ("SELECT citizen, count(*) AS n FROM sightings GROUP BY citizen ORDER BY n DESC, citizen LIMIT 15",
     "SELECT c.name, count(*) AS n FROM (SELECT unnest(citizens) AS c FROM dump) "
     "GROUP BY c.name ORDER BY n DESC, c.name LIMIT 15"),
    ("SELECT w, count(*) FROM (SELECT unnest(words) AS w FROM reports) GROUP BY w ORDER BY w",
     "SELECT w, count(*) FROM (SELECT unnest(words) AS w FROM dump) GROUP BY w ORDER BY w"),
    ("SELECT drone_id, seq, round(latitude, 9), round(longitude, 9) FROM sightings "
     "WHERE score < 5 ORDER BY drone_id, seq",
     "SELECT drone_id, seq, round(latitude, 9), round(longitude, 9) "
     "FROM (SELECT *, unnest(citizens) AS c FROM dump) WHERE c.score < 5 ORDER BY drone_id, seq"),
]


def vigie_rows(uri: str, sql: str):
    with flightsql.connect(uri) as conn, conn.cursor() as cur:
        cur.execute(sql)
        return [tuple(r) for r in cur.fetchall()]


def check_against_oracle(uri: str, dump):
    for vigie_sql, duck_sql in QUESTIONS:
        got = vigie_rows(uri, vigie_sql)
        want = oracle_rows(dump, duck_sql)
        assert got == want, f"{vigie_sql}\n vigie:  {got[:5]}\n duckdb: {want[:5]}"


def test_answers_match_duckdb_from_buffer_then_from_delta(start_vigie, tmp_path):
    dump = tmp_path / "fleet.jsonl"
    # No timed flush: the first checks read the buffer only.
    vigie = start_vigie("--flush-interval", "1h")
    out = simulate(vigie.addr, *FLEET, "--dump", str(dump))
    assert "sent=6000 accepted=6000 duplicates=0 rejected=0" in out, out
    check_against_oracle(vigie.uri, dump)

    # Sending the same fleet again stores nothing new.
    out = simulate(vigie.addr, *FLEET)
    assert "accepted=0 duplicates=6000" in out, out

    # A graceful stop commits the buffer; after a restart every answer comes from Delta.
    assert vigie.stop() == 0
    table_dir = tmp_path / "data" / "lake" / "tenants" / "default" / "tables" / "reports"
    assert list(table_dir.glob("day=*/*.parquet")), "no Parquet files"
    vigie = start_vigie("--flush-interval", "1h")
    check_against_oracle(vigie.uri, dump)

    # The open format: the deltalake package reads the same rows.
    delta = DeltaTable(str(table_dir))
    assert delta.metadata().partition_columns == ["day"]
    table = delta.to_pyarrow_table()
    assert table.num_rows == 6000
    assert vigie_rows(vigie.uri, "SELECT count(*) FROM reports") == [(6000,)]
    assert sorted(set(table.column("drone_id").to_pylist())) == [
        r[0] for r in vigie_rows(vigie.uri, "SELECT DISTINCT drone_id FROM reports ORDER BY 1")
    ]


def test_flushes_while_querying_never_lose_or_double_rows(start_vigie, tmp_path):
    # Flush every 1,000 rows while the fleet streams in; every answer sees each report once.
    vigie = start_vigie("--flush-rows", "1000", "--flush-interval", "200ms")
    dump = tmp_path / "fleet.jsonl"
    simulate(vigie.addr, *FLEET, "--dump", str(dump))
    n, k = vigie_rows(vigie.uri, "SELECT count(*), count(DISTINCT drone_id || ':' || seq) FROM reports")[0]
    assert n == k == 6000
    check_against_oracle(vigie.uri, dump)


def test_result_types_are_plain(start_vigie):
    vigie = start_vigie()
    simulate(vigie.addr, "--drones", "2", "--reports-per-drone", "3", "--start", "2026-01-01T00:00:00Z")
    with flightsql.connect(vigie.uri) as conn, conn.cursor() as cur:
        cur.execute("SELECT * FROM reports")
        schema = cur.fetch_arrow_table().schema
        cur.execute("SELECT * FROM sightings")
        sightings = cur.fetch_arrow_table().schema
    assert str(schema.field("drone_id").type) == "string"
    assert str(schema.field("seq").type) == "int64"
    assert str(schema.field("time").type) == "timestamp[us, tz=UTC]"
    assert str(schema.field("citizens").type) == "list<element: struct<name: string, score: double>>"
    assert str(schema.field("words").type) == "list<element: string>"
    assert str(sightings.field("citizen").type) == "string"
    assert str(sightings.field("score").type) == "double"


def test_bad_sql_is_invalid_argument(start_vigie):
    vigie = start_vigie()
    with pytest.raises(Exception, match="INVALID_ARGUMENT.*nope"):
        vigie_rows(vigie.uri, "SELECT nope FROM reports")
