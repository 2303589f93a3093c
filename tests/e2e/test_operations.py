"""Operators' view: gRPC health and reflection through grpcurl, and the /healthz and /readyz probes
through starting, ready and draining."""

import json
import shutil
import signal
import subprocess
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import grpc
import pytest

from conftest import Vigie, simulate

SERVICES = ["vigie.v1.Ingest", "vigie.v1.Alerts", "arrow.flight.protocol.FlightService", ""]


def grpcurl(*args: str) -> subprocess.CompletedProcess:
    exe = shutil.which("grpcurl") or str(Path(__file__).resolve().parents[2] / ".venv/bin/grpcurl")
    return subprocess.run([exe, "-plaintext", *args], capture_output=True, text=True, timeout=60)


def probe(addr: str, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://{addr}{path}", timeout=5) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


@pytest.fixture
def probed(tmp_path):
    """Starts servers with a metrics port (`.metrics` is its address)."""
    started = []

    def start(*args: str, data_dir: Path | None = None, wait_ready: bool = True) -> Vigie:
        v = Vigie(data_dir or tmp_path / "data", "--metrics-addr", "127.0.0.1:0", *args,
                  wait_ready=wait_ready)
        started.append(v)
        return v

    yield start
    for v in started:
        v.kill()


def test_grpcurl_lists_and_describes_the_services_and_reads_health(probed):
    vigie = probed()
    listed = grpcurl(vigie.addr, "list")
    assert listed.returncode == 0, listed.stderr
    services = set(listed.stdout.split())
    assert {"vigie.v1.Ingest", "vigie.v1.Alerts", "grpc.health.v1.Health"} <= services, services
    described = grpcurl(vigie.addr, "describe", "vigie.v1.Ingest")
    assert described.returncode == 0, described.stderr
    assert "rpc Write ( .vigie.v1.WriteRequest ) returns ( .vigie.v1.WriteResponse )" in described.stdout
    message = grpcurl(vigie.addr, "describe", "vigie.v1.DroneReport")
    assert "repeated .vigie.v1.Citizen citizens" in message.stdout, message.stdout
    for service in SERVICES:
        checked = grpcurl("-d", json.dumps({"service": service}), vigie.addr,
                          "grpc.health.v1.Health/Check")
        assert checked.returncode == 0, checked.stderr
        assert json.loads(checked.stdout) == {"status": "SERVING"}, (service, checked.stdout)
    unknown = grpcurl("-d", '{"service": "no.such.Service"}', vigie.addr, "grpc.health.v1.Health/Check")
    assert unknown.returncode != 0 and "NotFound" in unknown.stderr


def test_health_needs_no_credentials(probed, tmp_path):
    from conftest import vigie_bin

    data = tmp_path / "secured"
    for args in (["create-tenant", "north"], ["create-key", "--tenant", "north", "--role", "drone"]):
        subprocess.run([vigie_bin(), "admin", "--data-dir", str(data), *args], check=True,
                       capture_output=True)
    vigie = probed(data_dir=data)
    checked = grpcurl("-d", '{"service": "vigie.v1.Ingest"}', vigie.addr, "grpc.health.v1.Health/Check")
    assert checked.returncode == 0, checked.stderr
    assert "SERVING" in checked.stdout
    refused = grpcurl("-d", "{}", vigie.addr, "vigie.v1.Ingest/Write")
    assert refused.returncode != 0 and "Unauthenticated" in refused.stderr


def test_probes_starting_ready_draining(probed, tmp_path, pb):
    vigie_pb2, vigie_grpc = pb
    data = tmp_path / "data"
    # A WAL long enough that replaying it takes a moment: reports buffered, never flushed, then
    # the process killed.
    first = probed("--flush-interval", "1h", data_dir=data)
    simulate(first.uri, "--drones", "200", "--reports-per-drone", "500")
    first.proc.send_signal(signal.SIGKILL)
    first.proc.wait()

    second = probed("--flush-interval", "1h", data_dir=data, wait_ready=False)
    status, body = probe(second.metrics, "/readyz")
    assert probe(second.metrics, "/healthz")[0] == 200
    assert (status, body.split(":")[0]) == (503, "not ready"), body
    assert "starting" in body
    # Calls made while the WAL replays wait for it, then answer.
    channel = grpc.insecure_channel(second.addr)
    stub = vigie_grpc.IngestStub(channel)
    report = vigie_pb2.DroneReport(drone_id="late", seq=1, latitude=1.0, longitude=2.0)
    report.time.FromSeconds(1_767_225_600)
    answer = stub.Write(vigie_pb2.WriteRequest(reports=[report]), timeout=60)
    assert answer.accepted == 1
    deadline = time.time() + 60
    while probe(second.metrics, "/readyz")[0] != 200:
        assert time.time() < deadline, "never ready"
        time.sleep(0.05)
    assert probe(second.metrics, "/readyz") == (200, "ready\n")
    second.wait_ready()

    # Draining: an open subscription holds the drain; the probe and a health watcher see it.
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    watcher = health_pb2_grpc.HealthStub(channel).Watch(
        health_pb2.HealthCheckRequest(service="vigie.v1.Ingest"))
    assert next(watcher).status == health_pb2.HealthCheckResponse.SERVING
    subscription = vigie_grpc.AlertsStub(grpc.insecure_channel(second.addr)).Subscribe(
        vigie_pb2.SubscribeRequest())
    def drain():
        try:
            for _ in subscription:
                pass
        except grpc.RpcError:
            pass  # the server ends the stream at shutdown

    threading.Thread(target=drain, daemon=True).start()
    time.sleep(0.3)
    second.proc.send_signal(signal.SIGTERM)
    assert next(watcher).status == health_pb2.HealthCheckResponse.NOT_SERVING
    seen = None
    deadline = time.time() + 10
    while seen is None and time.time() < deadline:
        try:
            status, body = probe(second.metrics, "/readyz")
        except OSError:
            break
        if status == 503:
            seen = body
        time.sleep(0.02)
    assert seen and "draining" in seen, seen
    assert second.proc.wait(timeout=60) == 0
