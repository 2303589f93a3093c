"""Alerts end to end with a Python gRPC subscriber: the alerts received while `vigie simulate`
streams a fleet are exactly those DuckDB computes from the same reports (one per sighting under
20), with dense ids in order; a second run of the same fleet (all duplicates) raises none."""

import threading
import time

import duckdb
import grpc
import pytest

from conftest import simulate
from conftest import DUMP_COLUMNS

FLEET = ["--drones", "30", "--reports-per-drone", "200", "--seed", "11",
         "--start", "2026-06-01T22:00:00Z", "--batch", "100"]



def expected_alerts(dump):
    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    return con.execute(f"""
        SELECT drone_id, seq, c.name, c.score, latitude, longitude
        FROM (SELECT *, unnest(citizens) AS c FROM read_json('{dump}', columns = {DUMP_COLUMNS}))
        WHERE c.score < 20
        ORDER BY drone_id, seq, c.name""").fetchall()


def test_subscriber_receives_exactly_the_alerts_duckdb_computes(start_vigie, tmp_path, pb):
    vigie_pb2, vigie_grpc = pb
    dump = tmp_path / "fleet.jsonl"
    simulate(None, *FLEET, "--dump", str(dump))
    want = expected_alerts(dump)
    assert len(want) > 20, "the fleet should raise alerts"

    vigie = start_vigie()
    channel = grpc.insecure_channel(vigie.addr)
    stub = vigie_grpc.AlertsStub(channel)
    stream = stub.Subscribe(vigie_pb2.SubscribeRequest())
    # The server registers the subscriber before it answers with headers.
    stream.initial_metadata()
    received = []
    done = threading.Event()

    def collect():
        try:
            for alert in stream:
                received.append(alert)
                if len(received) == len(want):
                    done.set()
        except grpc.RpcError:
            pass

    reader = threading.Thread(target=collect, daemon=True)
    reader.start()

    out = simulate(vigie.addr, *FLEET)
    assert "accepted=6000" in out, out
    assert done.wait(timeout=30), f"received {len(received)} of {len(want)} alerts"

    assert [a.id for a in received] == list(range(1, len(want) + 1))
    got = sorted(
        (a.drone_id, a.seq, a.citizen, a.score, a.latitude, a.longitude) for a in received
    )
    assert got == want
    assert {a.rule for a in received} == {"low_score"}
    assert all(a.raised_at.seconds > 0 for a in received)

    # The same fleet again: all duplicates, no new alert.
    out = simulate(vigie.addr, *FLEET)
    assert "accepted=0 duplicates=6000" in out, out
    time.sleep(0.5)
    assert len(received) == len(want)
    stream.cancel()
    channel.close()
