"""Tenants, principals, roles, limits and audit against the real binary with two tenants.

`vigie admin` creates tenants `north` and `south` with users and keys in the data dir; drones send
with their tenant's key; analysts see only their tenant (rows and names); every refusal has its
gRPC code; bounded SQL; audit rows name the principal.
"""

import base64
import os
import subprocess
import time

import adbc_driver_flightsql.dbapi as flightsql
import adbc_driver_manager
import grpc
import pyarrow.flight as flight
import pytest
from flightsql import flightsql_pb2
from google.protobuf import any_pb2

from conftest import simulate, vigie_bin, vigie_query

PASSWORDS = {"ana": "north analyst pw", "boss": "north admin pass", "sam": "south analyst pw"}


def admin(data_dir, *args, stdin=None) -> str:
    out = subprocess.run([vigie_bin(), "admin", "--data-dir", str(data_dir), *args], input=stdin,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return out.stdout


def new_key(data_dir, tenant, role) -> tuple[str, str]:
    """(id, key): the key is alone on the last line, the id in the line before."""
    lines = admin(data_dir, "create-key", "--tenant", tenant, "--role", role).strip().splitlines()
    return lines[-2].split(" key ")[1].split()[0], lines[-1]



@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A server with tenants north and south, each with reports from its own drones."""
    from conftest import Vigie

    data = tmp_path_factory.mktemp("tenants") / "data"
    admin(data, "create-tenant", "north")
    # South has its own retention and rule (north keeps the server's `low_score=score < 20`).
    admin(data, "create-tenant", "south", "--retention", "30d", "--alert-rule", "watch=score < 50")
    for user, tenant, role in [("ana", "north", "analyst"), ("boss", "north", "admin"),
                               ("sam", "south", "analyst")]:
        admin(data, "create-user", "--tenant", tenant, "--role", role, user,
              stdin=PASSWORDS[user] + "\n")
    keys = {name: new_key(data, tenant, role) for name, tenant, role in [
        ("north_drone", "north", "drone"), ("south_drone", "south", "drone"),
        ("north_reader", "north", "analyst"), ("doomed", "north", "analyst")]}
    listing = admin(data, "list")
    assert "north" in listing and "sam" in listing and keys["doomed"][0] in listing
    assert keys["doomed"][1] not in listing  # secrets are never listed

    vigie = Vigie(data, "--flush-interval", "500ms", "--token-ttl", "4s",
                  "--query-timeout", "3s", "--query-memory-bytes", str(64 << 20))
    simulate(vigie.addr, "--drones", "3", "--reports-per-drone", "20", "--api-key",
             keys["north_drone"][1])
    simulate(vigie.addr, "--drones", "2", "--first-drone", "50", "--reports-per-drone", "30",
             "--api-key", keys["south_drone"][1])
    yield vigie, data, keys
    vigie.kill()


def connect(vigie, user=None, header=None):
    kwargs = {}
    if user:
        kwargs = {"username": user, "password": PASSWORDS[user]}
    if header:
        kwargs = {"adbc.flight.sql.authorization_header": header}
    return flightsql.connect(vigie.uri, db_kwargs=kwargs)


def rows(conn, sql):
    with conn.cursor() as cur:
        cur.execute(sql)
        return cur.fetchall()


def flight_code(vigie, sql, headers=()):
    """The gRPC status name a pyarrow Flight SQL query ends with ("OK" if none)."""
    client = flight.FlightClient(vigie.uri)
    command = any_pb2.Any()
    command.Pack(flightsql_pb2.CommandStatementQuery(query=sql))
    options = flight.FlightCallOptions(headers=[(k.encode(), v.encode()) for k, v in headers])
    try:
        info = client.get_flight_info(
            flight.FlightDescriptor.for_command(command.SerializeToString()), options)
        client.do_get(info.endpoints[0].ticket, options).read_all()
        return "OK"
    except flight.FlightUnauthenticatedError:
        return "UNAUTHENTICATED"
    except flight.FlightUnauthorizedError:
        return "PERMISSION_DENIED"
    finally:
        client.close()


def test_each_tenant_sees_only_its_rows_and_names(world):
    vigie, _, keys = world
    with connect(vigie, "ana") as north:
        assert rows(north, "SELECT DISTINCT drone_id FROM reports ORDER BY 1") == [
            ("drone-00000",), ("drone-00001",), ("drone-00002",)]
        assert rows(north, "SELECT count(*) FROM reports") == [(60,)]
        objects = north.adbc_get_objects(depth="columns").read_all().to_pylist()
        names = {t["table_name"] for c in objects for s in c["catalog_db_schemas"]
                 for t in s["db_schema_tables"]}
        assert "reports" in names and "audit_log" not in names
        text = str(objects) + str(rows(north, "SELECT * FROM information_schema.tables"))
        assert "south" not in text and "drone-00050" not in text
    with connect(vigie, "sam") as south:
        assert rows(south, "SELECT DISTINCT drone_id FROM reports ORDER BY 1") == [
            ("drone-00050",), ("drone-00051",)]
        assert rows(south, "SELECT count(*) FROM alerts WHERE drone_id < 'drone-00050'") == [(0,)]
    with connect(vigie, header=f"Bearer {keys['north_reader'][1]}") as by_key:
        assert rows(by_key, "SELECT count(*) FROM reports") == [(60,)]
    # The terminal client, with a key and with a user.
    out = vigie_query("--endpoint", vigie.uri, "--token", keys["north_reader"][1],
                      "SELECT count(*) AS n FROM reports").stdout
    assert "| 60 |" in out.replace(" ", "").replace("|60|", "| 60 |")
    env_out = subprocess.run(
        [vigie_bin(), "query", "--endpoint", vigie.uri, "--user", "sam",
         "SELECT count(*) AS n FROM reports"], capture_output=True, text=True, timeout=60,
        env={**os.environ, "VIGIE_PASSWORD": PASSWORDS["sam"]}, check=True).stdout
    assert "| 60 |" in env_out.replace(" ", "").replace("|60|", "| 60 |")


def test_alert_subscriptions_carry_only_the_tenants_alerts(world, pb):
    vigie, _, keys = world
    vigie_pb2, vigie_grpc = pb
    with connect(vigie, "sam") as south:
        (count,), = rows(south, "SELECT count(*) FROM alerts")
    assert count > 0, "the south fleet should raise alerts"
    channel = grpc.insecure_channel(vigie.addr)
    stub = vigie_grpc.AlertsStub(channel)
    creds = base64.b64encode(f"sam:{PASSWORDS['sam']}".encode()).decode()
    stream = stub.Subscribe(vigie_pb2.SubscribeRequest(from_id=1),
                            metadata=[("authorization", f"Basic {creds}")], timeout=5)
    got = []
    try:
        for alert in stream:
            got.append(alert)
            if len(got) == count:
                break
    finally:
        stream.cancel()
    assert count > 0 and len(got) == count
    assert {a.drone_id for a in got} <= {"drone-00050", "drone-00051"}
    assert {a.rule for a in got} == {"watch"} and all(a.score < 50 for a in got)
    # A drone key may not subscribe.
    with pytest.raises(grpc.RpcError) as denied:
        next(iter(stub.Subscribe(vigie_pb2.SubscribeRequest(),
                                 metadata=[("authorization", f"Bearer {keys['south_drone'][1]}")])))
    assert denied.value.code() == grpc.StatusCode.PERMISSION_DENIED
    channel.close()


def test_roles_and_bad_credentials_get_the_right_codes(world, pb):
    vigie, data, keys = world
    vigie_pb2, vigie_grpc = pb
    drone = ("authorization", f"Bearer {keys['north_drone'][1]}")
    assert flight_code(vigie, "SELECT 1", [drone]) == "PERMISSION_DENIED"
    assert flight_code(vigie, "SELECT 1") == "UNAUTHENTICATED"
    assert flight_code(vigie, "SELECT 1", [("authorization", "Bearer vigie_made_up")]) \
        == "UNAUTHENTICATED"
    wrong = base64.b64encode(b"ana:not the password").decode()
    assert flight_code(vigie, "SELECT 1", [("authorization", f"Basic {wrong}")]) \
        == "UNAUTHENTICATED"
    with pytest.raises(adbc_driver_manager.Error):
        with connect(vigie, header="Basic " + wrong) as conn:
            rows(conn, "SELECT 1")

    # An analyst cannot write reports.
    channel = grpc.insecure_channel(vigie.addr)
    ingest = vigie_grpc.IngestStub(channel)
    request = vigie_pb2.WriteRequest()
    for who, code in [(f"Bearer {keys['north_reader'][1]}", grpc.StatusCode.PERMISSION_DENIED),
                      (None, grpc.StatusCode.UNAUTHENTICATED)]:
        with pytest.raises(grpc.RpcError) as refused:
            ingest.Write(request, metadata=[("authorization", who)] if who else None)
        assert refused.value.code() == code

    # Both Basic forms log in through the raw Handshake; the token works, then expires.
    handshake = channel.stream_stream("/arrow.flight.protocol.FlightService/Handshake")
    padded = base64.b64encode(f"ana:{PASSWORDS['ana']}".encode()).decode()
    tokens = []
    for credentials in [padded, padded.rstrip("=")]:
        call = handshake(iter([b""]), metadata=[("authorization", f"Basic {credentials}")])
        list(call)
        tokens.append(dict(call.initial_metadata())["authorization"])
    assert padded.endswith("=")
    assert flight_code(vigie, "SELECT 1", [("authorization", tokens[1])]) == "OK"
    with pytest.raises(grpc.RpcError) as refused:
        list(handshake(iter([b""]), metadata=[("authorization", f"Basic {wrong}")]))
    assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
    with pytest.raises(grpc.RpcError) as refused:
        list(handshake(iter([b""]), metadata=[drone]))
    assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
    channel.close()
    time.sleep(4.5)
    assert flight_code(vigie, "SELECT 1", [("authorization", tokens[0])]) == "UNAUTHENTICATED"

    # Revocation applies without a restart.
    doomed = ("authorization", f"Bearer {keys['doomed'][1]}")
    assert flight_code(vigie, "SELECT 1", [doomed]) == "OK"
    admin(data, "revoke-key", keys["doomed"][0])
    deadline = time.time() + 10
    while flight_code(vigie, "SELECT 1", [doomed]) == "OK" and time.time() < deadline:
        time.sleep(0.2)
    assert flight_code(vigie, "SELECT 1", [doomed]) == "UNAUTHENTICATED"

    # A deleted user's session ends; a user with a new password logs in with it only.
    login = flight.FlightClient(vigie.uri)
    token = login.authenticate_basic_token("ana", PASSWORDS["ana"])[1].decode()
    login.close()
    assert flight_code(vigie, "SELECT 1", [("authorization", token)]) == "OK"
    admin(data, "set-password", "boss", stdin="the new admin pass\n")
    admin(data, "create-user", "--tenant", "north", "--role", "analyst", "temp",
          stdin="temporary user pw\n")
    temp = base64.b64encode(b"temp:temporary user pw").decode()
    deadline = time.time() + 10
    while flight_code(vigie, "SELECT 1", [("authorization", f"Basic {temp}")]) != "OK":
        assert time.time() < deadline
        time.sleep(0.2)
    old_boss = base64.b64encode(f"boss:{PASSWORDS['boss']}".encode()).decode()
    new_boss = base64.b64encode(b"boss:the new admin pass").decode()
    assert flight_code(vigie, "SELECT 1", [("authorization", f"Basic {old_boss}")]) \
        == "UNAUTHENTICATED"
    assert flight_code(vigie, "SELECT 1", [("authorization", f"Basic {new_boss}")]) == "OK"
    admin(data, "set-password", "boss", stdin=PASSWORDS["boss"] + "\n")
    admin(data, "delete-user", "ana")
    deadline = time.time() + 10
    while flight_code(vigie, "SELECT 1", [("authorization", token)]) == "OK":
        assert time.time() < deadline
        time.sleep(0.2)
    admin(data, "create-user", "--tenant", "north", "--role", "analyst", "ana",
          stdin=PASSWORDS["ana"] + "\n")
    ana = base64.b64encode(f"ana:{PASSWORDS['ana']}".encode()).decode()
    deadline = time.time() + 10
    while flight_code(vigie, "SELECT 1", [("authorization", f"Basic {ana}")]) != "OK":
        assert time.time() < deadline
        time.sleep(0.2)


@pytest.mark.parametrize("sql", [
    "CREATE TABLE t AS SELECT 1",
    "DROP TABLE reports",
    "INSERT INTO reports SELECT * FROM reports",
    "COPY reports TO '/tmp/stolen.parquet'",
    "CREATE EXTERNAL TABLE pw STORED AS CSV LOCATION '/etc/passwd'",
    "SELECT * FROM read_parquet('/etc/passwd')",
    "SELECT * FROM '/etc/passwd'",
    "SET datafusion.execution.target_partitions = 1000",
])
def test_writes_files_and_settings_are_refused(world, sql):
    vigie, _, _ = world
    with connect(vigie, "ana") as conn:
        with pytest.raises(adbc_driver_manager.Error) as refused:
            rows(conn, sql)
        assert "INVALID_ARGUMENT" in str(refused.value) or "InvalidArgument" in str(refused.value)


def test_runaway_queries_fail_cleanly_and_others_keep_working(world):
    vigie, _, _ = world
    with connect(vigie, "ana") as conn:
        with pytest.raises(adbc_driver_manager.Error) as memory:
            rows(conn, "SELECT array_agg(value) FROM generate_series(1, 50000000)")
        assert "Resources exhausted" in str(memory.value)
        started = time.time()
        with pytest.raises(adbc_driver_manager.Error) as slow:
            rows(conn, "SELECT count(*) FROM generate_series(1, 100000000000)")
        assert "longer than the limit of 3s" in str(slow.value)
        assert time.time() - started < 30
        assert rows(conn, "SELECT count(*) FROM reports") == [(60,)]


def test_audit_log_records_queries_for_admins_only(world):
    vigie, _, _ = world
    marker = "SELECT 'audit-me' AS marker"
    with connect(vigie, "ana") as conn:
        assert rows(conn, marker) == [("audit-me",)]
        with pytest.raises(adbc_driver_manager.Error):
            rows(conn, "SELECT * FROM audit_log")
        with pytest.raises(adbc_driver_manager.Error):
            rows(conn, "DROP TABLE reports")
    with connect(vigie, "boss") as conn:
        audit = rows(conn, "SELECT principal, role, action, detail, rows, outcome FROM audit_log "
                           "ORDER BY time")
        assert ("user:ana", "analyst", "query", marker, 1, "ok") in audit
        refused = [a for a in audit if a[3] == "DROP TABLE reports"]
        assert refused and refused[-1][0] == "user:ana" and refused[-1][5].startswith("error:")
        assert any(a[3] == "SELECT * FROM audit_log" and a[5].startswith("error:") for a in audit)
        admin_actions = {(a[2], a[3]) for a in audit if a[0].startswith("admin-cli:")}
        assert {("create-tenant", "tenant north"), ("create-user", "user ana (analyst)"),
                ("create-user", "user boss (admin)")} <= admin_actions
        assert not any("sam" in (a[3] or "") for a in audit)  # south's actions stay in south
    with connect(vigie, "sam") as conn:
        with pytest.raises(adbc_driver_manager.Error):
            rows(conn, "SELECT * FROM audit_log")


def test_open_mode_refuses_non_loopback_addresses(tmp_path):
    out = subprocess.run([vigie_bin(), "serve", "--data-dir", str(tmp_path / "d"),
                          "--grpc-addr", "0.0.0.0:0"], capture_output=True, text=True, timeout=60)
    assert out.returncode != 0
    assert "refusing to listen on 0.0.0.0:0 without authentication" in out.stderr


def test_a_tenant_runs_at_most_the_concurrent_limit(start_vigie):
    import threading

    vigie = start_vigie("--max-concurrent-queries", "1", "--query-timeout", "4s")
    outcome = {}

    def slow():
        with connect(vigie) as conn:
            try:
                rows(conn, "SELECT count(*) FROM generate_series(1, 100000000000)")
            except adbc_driver_manager.Error as e:
                outcome["slow"] = str(e)

    runner = threading.Thread(target=slow)
    runner.start()
    time.sleep(1.0)
    with connect(vigie) as conn:
        with pytest.raises(adbc_driver_manager.Error) as busy:
            rows(conn, "SELECT 1")
        assert "already running" in str(busy.value)
        runner.join(timeout=30)
        assert "longer than the limit" in outcome["slow"]
        assert rows(conn, "SELECT 1") == [(1,)]  # the permit came back
