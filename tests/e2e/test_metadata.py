"""Flight SQL metadata through the ADBC driver (what DBeaver and Grafana browse): catalogs, schemas,
tables with their Arrow schemas, table types, with and without filters."""

import adbc_driver_flightsql.dbapi as flightsql


def test_get_objects_and_table_schema(start_vigie):
    vigie = start_vigie()
    with flightsql.connect(vigie.uri) as conn:
        objects = conn.adbc_get_objects(depth="tables").read_all().to_pylist()
        tree = {
            c["catalog_name"]: {
                s["db_schema_name"]: sorted((t["table_name"], t["table_type"]) for t in s["db_schema_tables"])
                for s in c["catalog_db_schemas"]
            }
            for c in objects
        }
        assert tree["vigie"]["public"] == [
            ("alert_events", "TABLE"), ("alert_rules", "VIEW"), ("alerts", "TABLE"), ("audit_log", "TABLE"),
            ("ingest_stats", "TABLE"), ("reports", "TABLE"), ("reports_hourly", "TABLE"), ("sightings", "VIEW"),
        ]  # audit_log: the open mode's anonymous caller is the default tenant's admin
        # Filters with patterns, and no catalog given.
        only = conn.adbc_get_objects(depth="tables", table_name_filter="rep_rts").read_all().to_pylist()
        names = [t["table_name"] for c in only for s in c["catalog_db_schemas"]
                 for t in s["db_schema_tables"]]
        assert names == ["reports"]
        schema = conn.adbc_get_table_schema("reports", catalog_filter="vigie", db_schema_filter="public")
        assert schema.names == ["drone_id", "seq", "time", "latitude", "longitude", "citizens",
                                "words", "received_at", "day"]
        assert str(schema.field("time").type) == "timestamp[us, tz=UTC]"
        assert conn.adbc_get_table_types() == ["TABLE", "VIEW"]
        info = conn.adbc_get_info()
        assert info["vendor_name"] == "Vigie"


def test_get_objects_at_every_depth(start_vigie):
    vigie = start_vigie()
    with flightsql.connect(vigie.uri) as conn:
        catalogs = conn.adbc_get_objects(depth="catalogs").read_all().to_pylist()
        assert [c["catalog_name"] for c in catalogs] == ["vigie"]
        schemas = conn.adbc_get_objects(depth="db_schemas").read_all().to_pylist()
        assert [(c["catalog_name"], [s["db_schema_name"] for s in c["catalog_db_schemas"]])
                for c in schemas] == [("vigie", ["public"])]
        # Columns (JDBC getColumns is the same GetTables call with include_schema).
        full = conn.adbc_get_objects(depth="all", table_name_filter="alerts",
                                     column_name_filter="%i%").read_all().to_pylist()
        (table,) = [t for c in full for s in c["catalog_db_schemas"] for t in s["db_schema_tables"]]
        columns = [(col["column_name"], col["ordinal_position"]) for col in table["table_columns"]]
        assert columns == [("id", 1), ("drone_id", 3), ("time", 5), ("latitude", 6),
                           ("longitude", 7), ("citizen", 8), ("raised_at", 10)], columns
        # A filter that matches nothing is an empty answer, not an error.
        none = conn.adbc_get_objects(depth="tables", catalog_filter="nope").read_all()
        assert none.num_rows == 0


def test_handshake_basic_in_both_base64_forms(start_vigie):
    import base64

    import pyarrow.flight as flight

    vigie = start_vigie()
    # pyarrow: padded base64 ("al:p" needs "=="); the answer is a Bearer token header.
    client = flight.FlightClient(vigie.uri)
    key, value = client.authenticate_basic_token("al", "p")
    assert key == b"authorization" and value.startswith(b"Bearer ")
    # ADBC's Go driver sends the same credentials without padding.
    assert not base64.b64encode(b"al:p").rstrip(b"=").endswith(b"=")
    with flightsql.connect(vigie.uri, db_kwargs={"username": "al", "password": "p"}) as conn, \
            conn.cursor() as cur:
        cur.execute("SELECT 1 AS one")
        assert cur.fetchall() == [(1,)]
    # The token is accepted on later calls.
    with flightsql.connect(vigie.uri, db_kwargs={
            "adbc.flight.sql.authorization_header": value.decode()}) as conn, conn.cursor() as cur:
        cur.execute("SELECT count(*) FROM reports")
        assert cur.fetchall() == [(0,)]


def test_prepared_statement_reused_several_times(start_vigie):
    from conftest import simulate

    vigie = start_vigie()
    simulate(vigie.addr, "--drones", "3", "--reports-per-drone", "5", "--start", "2026-01-01T00:00:00Z")
    sql = "SELECT drone_id, count(*) AS n FROM reports GROUP BY drone_id ORDER BY drone_id"
    with flightsql.connect(vigie.uri) as conn, conn.cursor() as cur:
        parameters = cur.adbc_prepare(sql)
        assert parameters.names == []
        for _ in range(3):
            cur.execute(sql)
            table = cur.fetch_arrow_table()
            assert table.schema.names == ["drone_id", "n"]
            assert [tuple(r.values()) for r in table.to_pylist()] == [
                ("drone-00000", 5), ("drone-00001", 5), ("drone-00002", 5)]
