"""Flight SQL as its real clients use it: the ADBC driver (prepared statements with parameters,
get_info), flightsql-dbapi (pyarrow underneath, a pre-15 client that keeps the first prepared
handle), raw Handshakes in both base64 forms, metadata commands DBeaver's JDBC driver calls
(SqlInfo, XdbcTypeInfo, keys), and the errors each gets. Answers are checked against DuckDB over
the very reports sent."""

import base64
from datetime import datetime, timezone

import adbc_driver_flightsql.dbapi as adbc
import grpc
import pyarrow as pa
import pyarrow.flight as flight
import pytest
from flightsql import FlightSQLClient, flightsql_pb2
from flightsql.dbapi import connect as dbapi_connect
from google.protobuf import any_pb2

from conftest import oracle_rows, simulate

FLEET = ["--drones", "6", "--reports-per-drone", "40", "--seed", "7",
         "--start", "2026-02-01T00:00:00Z"]

# A question with typed parameters: a drone and a time window.
VIGIE_SQL = ("SELECT seq, round(latitude, 9) AS lat, cardinality(citizens) AS n FROM reports "
             "WHERE drone_id = ? AND time >= ? AND time < ? ORDER BY seq")
DUCK_SQL = ("SELECT seq, round(latitude, 9), len(citizens) FROM dump "
            "WHERE drone_id = ? AND time >= ? AND time < ? ORDER BY seq")
T0 = datetime(2026, 2, 1, 0, 5, tzinfo=timezone.utc)
T1 = datetime(2026, 2, 1, 0, 25, tzinfo=timezone.utc)


@pytest.fixture(scope="module")
def fleet(tmp_path_factory):
    """One server with the fleet in it, and the dump of what was sent."""
    from conftest import Vigie

    tmp = tmp_path_factory.mktemp("clients")
    vigie = Vigie(tmp / "data", "--flush-rows", "100")
    dump = tmp / "fleet.jsonl"
    out = simulate(vigie.addr, *FLEET, "--dump", str(dump))
    assert "accepted=240" in out, out
    yield vigie, dump
    vigie.kill()


def test_adbc_prepared_statement_with_parameters_executed_several_times(fleet):
    vigie, dump = fleet
    with adbc.connect(vigie.uri) as conn, conn.cursor() as cur:
        parameters = cur.adbc_prepare(VIGIE_SQL)
        assert parameters.names == ["$1", "$2", "$3"]
        assert str(parameters.field("$1").type) == "string"
        assert str(parameters.field("$2").type) == "timestamp[us, tz=UTC]"
        for drone in ["drone-00000", "drone-00003", "drone-00005", "drone-00003"]:
            cur.execute(VIGIE_SQL, parameters=(drone, T0, T1))
            got = [tuple(r) for r in cur.fetchall()]
            want = oracle_rows(dump, DUCK_SQL, [drone, T0, T1])
            assert got == want and len(got) == 20, (drone, got, want)
        # A wrong number of parameters is the client's mistake, said clearly.
        with pytest.raises(Exception, match="INVALID_ARGUMENT.*3 parameter"):
            cur.execute(VIGIE_SQL, parameters=("drone-00000",))
        info = conn.adbc_get_info()
        assert info["vendor_name"] == "Vigie"
        assert info["vendor_arrow_version"].startswith("59.")
        assert info["vendor_version"] == "0.1.0"


def test_flightsql_dbapi_queries_and_parameters(fleet):
    vigie, dump = fleet
    host, port = vigie.addr.rsplit(":", 1)
    client = FlightSQLClient(host=host, port=int(port), insecure=True)
    conn = dbapi_connect(client)
    cur = conn.cursor()
    cur.execute("SELECT drone_id, count(*) AS n FROM reports GROUP BY drone_id ORDER BY drone_id")
    assert [tuple(r) for r in cur.fetchall()] == oracle_rows(
        dump, "SELECT drone_id, count(*) FROM dump GROUP BY drone_id ORDER BY drone_id")
    # flightsql-dbapi binds through DoPut and then executes the handle it got first: the
    # binding is remembered for that handle.
    cur.execute("SELECT count(*) FROM reports WHERE drone_id = ? AND seq > ?", ("drone-00002", 10))
    assert [tuple(r) for r in cur.fetchall()] == oracle_rows(
        dump, "SELECT count(*) FROM dump WHERE drone_id = ? AND seq > ?", ["drone-00002", 10])
    cur.executemany("SELECT count(*) FROM reports WHERE seq = ?", [(1,), (2,)])

    # Metadata commands through the same client.
    tables = client.do_get(client.get_tables(include_schema=True).endpoints[0].ticket).read_all()
    assert sorted(tables.column("table_name").to_pylist()) == [
        "alert_events", "alert_rules", "alerts", "audit_log", "ingest_stats", "reports",
        "reports_hourly", "sightings"]
    types = client.do_get(client.get_xdbc_type_info(None).endpoints[0].ticket).read_all()
    assert {"BIGINT", "DOUBLE", "VARCHAR", "TIMESTAMP", "BOOLEAN"} <= set(
        types.column("type_name").to_pylist())
    bigint = client.do_get(client.get_xdbc_type_info(-5).endpoints[0].ticket).read_all()
    assert bigint.column("type_name").to_pylist() == ["BIGINT"]
    from flightsql.client import TableRef
    ref = TableRef(catalog="vigie", db_schema="public", table="reports")
    for info in [client.get_primary_keys(ref), client.get_exported_keys(ref),
                 client.get_imported_keys(ref)]:
        keys = client.do_get(info.endpoints[0].ticket).read_all()
        assert keys.num_rows == 0 and keys.num_columns >= 6
    client.close()


def sql_info(vigie, *codes):
    client = flight.FlightClient(vigie.uri)
    command = any_pb2.Any()
    command.Pack(flightsql_pb2.CommandGetSqlInfo(info=list(codes)))
    info = client.get_flight_info(flight.FlightDescriptor.for_command(command.SerializeToString()))
    table = client.do_get(info.endpoints[0].ticket).read_all()
    return {row["info_name"]: row["value"] for row in table.to_pylist()}


def test_sql_info_describes_the_dialect(fleet):
    vigie, _ = fleet
    info = sql_info(vigie)
    assert info[0] == "Vigie"  # FLIGHT_SQL_SERVER_NAME
    assert info[3] is True  # FLIGHT_SQL_SERVER_READ_ONLY
    assert info[504] == '"'  # SQL_IDENTIFIER_QUOTE_CHAR
    assert info[100] == 300_000  # FLIGHT_SQL_SERVER_STATEMENT_TIMEOUT: --query-timeout, in ms
    assert info[563] is False  # SQL_TRANSACTIONS_SUPPORTED
    assert "SELECT" in info[508]  # SQL_KEYWORDS
    assert "ABS" in info[509] and "UPPER" in info[510] and "DATE_TRUNC" in info[512]
    assert "COUNT" in info[511]
    only = sql_info(vigie, 0, 504)
    assert sorted(only) == [0, 504]


def test_raw_handshake_in_both_base64_forms(fleet):
    vigie, _ = fleet
    channel = grpc.insecure_channel(vigie.addr)
    handshake = channel.stream_stream("/arrow.flight.protocol.FlightService/Handshake")
    for credentials in [base64.b64encode(b"al:p").decode(),             # pyarrow: padded
                        base64.b64encode(b"al:p").decode().rstrip("=")]:  # ADBC Go: unpadded
        assert credentials.endswith("=") == (credentials == base64.b64encode(b"al:p").decode())
        call = handshake(iter([b""]), metadata=[("authorization", f"Basic {credentials}")])
        responses = list(call)
        headers = dict(call.initial_metadata())
        assert headers["authorization"].startswith("Bearer ")
        assert len(responses) == 1
    with pytest.raises(grpc.RpcError) as refused:
        list(handshake(iter([b""]), metadata=[("authorization", "Basic !!!")]))
    assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
    channel.close()
    # pyarrow's own Basic handshake, then the token on a query.
    client = flight.FlightClient(vigie.uri)
    key, value = client.authenticate_basic_token("al", "p")
    options = flight.FlightCallOptions(headers=[(key, value)])
    command = any_pb2.Any()
    command.Pack(flightsql_pb2.CommandStatementQuery(query="SELECT count(*) AS n FROM reports"))
    info = client.get_flight_info(flight.FlightDescriptor.for_command(command.SerializeToString()),
                                  options)
    assert client.do_get(info.endpoints[0].ticket, options).read_all().to_pylist() == [{"n": 240}]


def test_errors_name_the_problem(fleet):
    vigie, _ = fleet
    client = flight.FlightClient(vigie.uri)

    def info_of(message):
        command = any_pb2.Any()
        command.Pack(message)
        return client.get_flight_info(flight.FlightDescriptor.for_command(command.SerializeToString()))

    # INVALID_ARGUMENT is pyarrow's ArrowInvalid; DataFusion's message says what is wrong.
    with pytest.raises(pa.ArrowInvalid, match="No field named nope"):
        info_of(flightsql_pb2.CommandStatementQuery(query="SELECT nope FROM reports"))
    with pytest.raises(pa.ArrowInvalid, match="read-only"):
        info_of(flightsql_pb2.CommandStatementQuery(query="DROP TABLE reports"))
    with pytest.raises(pa.ArrowNotImplementedError, match="CommandStatementSubstraitPlan"):
        info_of(flightsql_pb2.CommandStatementSubstraitPlan())
    # executeUpdate (DoPut CommandStatementUpdate) is refused: Vigie's SQL is read-only.
    command = any_pb2.Any()
    command.Pack(flightsql_pb2.CommandStatementUpdate(query="DELETE FROM reports"))
    writer, reader = client.do_put(flight.FlightDescriptor.for_command(command.SerializeToString()),
                                   pa.schema([]))
    with pytest.raises(pa.ArrowInvalid, match="read-only"):
        writer.done_writing()
        reader.read()
        writer.close()


def test_plan_once_ticket_survives_its_cache(fleet):
    """A ticket fetched twice (its cached plan is gone the second time) gives the same rows."""
    vigie, _ = fleet
    client = flight.FlightClient(vigie.uri)
    command = any_pb2.Any()
    command.Pack(flightsql_pb2.CommandStatementQuery(
        query="SELECT drone_id, max(seq) AS m FROM reports GROUP BY drone_id ORDER BY drone_id"))
    info = client.get_flight_info(flight.FlightDescriptor.for_command(command.SerializeToString()))
    first = client.do_get(info.endpoints[0].ticket).read_all()
    second = client.do_get(info.endpoints[0].ticket).read_all()
    assert first == second and first.num_rows == 6
    assert first.schema == info.schema
