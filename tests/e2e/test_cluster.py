"""Cluster mode: the write-ahead log on a real 3-node NATS JetStream cluster (R3,
`sync_interval: always`, loopback only), and tenants owned by lease. A node lost with everything
still unflushed loses no acknowledged report (another node takes the tenant over once the lease
expires, and replays its stream), a paused owner that wakes up after a takeover steps down and
forwards its writes to the new owner (nothing stored twice), and with three nodes any of them
takes writes and serves alert subscriptions, also while the owner is killed under load."""

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import grpc
import pytest

from conftest import simulate, vigie_bin
from test_s3 import free_port
from test_slice import check_against_oracle, vigie_rows

FLEET = ("--drones", "20", "--reports-per-drone", "50", "--seed", "7",
         "--start", "2026-01-01T00:00:00Z")
# Other drones (ids from 1000), so none of their reports is a duplicate of FLEET's.
MORE = ("--drones", "10", "--reports-per-drone", "30", "--seed", "8", "--first-drone", "1000",
        "--start", "2026-01-01T00:00:00Z")


class Nats:
    """A running 3-node cluster: `urls` for `--stream`, each node's process and monitor port."""

    def __init__(self, procs, client, monitor):
        self.procs, self.client, self.monitor = procs, client, monitor

    def __str__(self):
        return ",".join(f"nats://127.0.0.1:{p}" for p in self.client)

    def stream_leader(self, name: str) -> int:
        """The index of the node leading stream `name`."""
        for i, proc in enumerate(self.procs):
            if proc.poll() is not None:
                continue
            url = f"http://127.0.0.1:{self.monitor[i]}/jsz?streams=true"
            with urllib.request.urlopen(url, timeout=2) as r:
                for account in json.load(r).get("account_details", []):
                    for stream in account.get("stream_detail", []):
                        if stream["name"] == name and stream.get("cluster", {}).get("leader"):
                            return int(stream["cluster"]["leader"].removeprefix("n"))
        raise AssertionError(f"no node knows the leader of stream {name}")


def start_nats(tmp_path, attempt):
    """Three nats-server processes in one cluster, or None if one exited at start (a port
    `free_port` picked was taken meanwhile by another process)."""
    server = shutil.which("nats-server") or str(Path(sys.executable).parent / "nats-server")
    client, route, monitor = ([free_port() for _ in range(3)] for _ in range(3))
    procs = []
    for i in range(3):
        routes = ", ".join(f"nats://127.0.0.1:{route[j]}" for j in range(3) if j != i)
        conf = tmp_path / f"nats-{attempt}-{i}.conf"
        conf.write_text(
            f'server_name: n{i}\nlisten: "127.0.0.1:{client[i]}"\nhttp: "127.0.0.1:{monitor[i]}"\n'
            f'jetstream {{ store_dir: "{tmp_path / f"nats-{attempt}-{i}"}", sync_interval: always }}\n'
            f'cluster {{ name: vigie, listen: "127.0.0.1:{route[i]}", routes: [{routes}] }}\n'
        )
        log = open(tmp_path / f"nats-{attempt}-{i}.log", "w")
        procs.append(subprocess.Popen([server, "-c", str(conf)], stdout=log, stderr=log))
    deadline = time.time() + 60
    # Ready once every node knows the JetStream meta leader.
    for i in range(3):
        while True:
            if procs[i].poll() is not None:
                for p in procs:
                    p.kill()
                    p.wait()
                return None
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{monitor[i]}/jsz", timeout=2) as r:
                    if json.load(r).get("meta_cluster", {}).get("leader"):
                        break
            except OSError:
                pass
            assert time.time() < deadline, "the NATS cluster elected no JetStream leader"
            time.sleep(0.2)
    return Nats(procs, client, monitor)


@pytest.fixture
def nats(tmp_path):
    """Three nats-server processes in one cluster (see `Nats`). A fresh cluster per test (~3 s),
    so that no stream is left over from another test."""
    for attempt in range(3):
        cluster = start_nats(tmp_path, attempt)
        if cluster is not None:
            break
    else:
        raise AssertionError(f"nats-server kept exiting at start: see {tmp_path}/nats-*.log")
    yield cluster
    for p in cluster.procs:
        p.kill()
        p.wait()


SECRET = "cluster-secret-of-the-tests"
LEASE_TTL = 3


def node_args(tmp_path, nats):
    lake = tmp_path / "lake"
    lake.mkdir(exist_ok=True)
    # No timed flush: until a graceful stop, the reports exist only in JetStream.
    return ("--object-store", lake.as_uri() + "/", "--stream", str(nats), "--stream-replicas", "3",
            "--flush-interval", "1h", "--compact-interval", "0s", "--cluster-secret", SECRET,
            "--lease-ttl", f"{LEASE_TTL}s", "--metrics-addr", "127.0.0.1:0")


def metric(node, name):
    """The value of metric `name` (with its labels) at `node`, None when absent."""
    with urllib.request.urlopen(f"http://{node.metrics}/metrics", timeout=5) as r:
        for line in r.read().decode().splitlines():
            if line.startswith(name + " "):
                return float(line.split()[-1])
    return None


def wait_owner(node, tenant="default", timeout=LEASE_TTL * 10):
    """Waits until `node` owns `tenant` (its `vigie_cluster_owner` gauge): a follower already
    answers queries over the whole stream, but writes sent to it are forwarded to the owner,
    which fail while that owner is dead and its lease not yet expired."""
    want = f'vigie_cluster_owner{{tenant="{tenant}"}} 1'
    deadline = time.time() + timeout
    while True:
        with urllib.request.urlopen(f"http://{node.metrics}/metrics", timeout=5) as r:
            if want in r.read().decode().splitlines():
                return
        assert time.time() < deadline, f"{node.addr} never took {tenant} over"
        time.sleep(0.2)


def wait_rows(uri, sql, want, timeout=60):
    """Polls `sql` until it answers `want`."""
    deadline = time.time() + timeout
    while True:
        got = vigie_rows(uri, sql)
        if got == want:
            return
        assert time.time() < deadline, f"{sql}: {got}, expected {want}"
        time.sleep(0.5)


def minute_batch(vigie_pb2, n):
    """Ten drones' minute n; drone 0 sees a low score: one alert per batch."""
    reports = []
    for k in range(10):
        report = vigie_pb2.DroneReport(drone_id=f"drone-{k}", seq=n, latitude=48.85,
                                       longitude=2.35)
        report.time.FromSeconds(1_767_225_600 + n * 60)
        if k == 0:
            report.citizens.add(name="x", score=5.0)
        reports.append(report)
    return reports


def parquet_files(tmp_path):
    return list((tmp_path / "lake").rglob("*.parquet"))


def test_a_lost_node_loses_no_acknowledged_report(nats, start_vigie, tmp_path):
    args = node_args(tmp_path, nats)
    a = start_vigie(*args, data_dir=tmp_path / "a")
    dump = tmp_path / "fleet.jsonl"
    out = simulate(a.addr, *FLEET, "--dump", str(dump))
    assert "sent=1000 accepted=1000 duplicates=0" in out, out
    # Nothing flushed: every record is what a takeover replays.
    assert metric(a, 'vigie_stream_lag_records{stream="vigie-default"}') > 0
    alerts = vigie_rows(a.uri, "SELECT count(*), min(id), max(id) FROM alerts")
    assert alerts[0][0] > 3 and alerts[0][1:] == (1, alerts[0][0]), alerts

    # kill -9, nothing flushed; another node with an empty data dir takes the stream over.
    a.kill()
    assert parquet_files(tmp_path) == []
    b = start_vigie(*args, data_dir=tmp_path / "b")
    # b follows the tenant, reading the stream a wrote: it sees every acknowledged report at
    # once, before a's lease expires and b takes the tenant over.
    assert vigie_rows(b.uri, "SELECT count(*), count(DISTINCT (drone_id, seq)) FROM reports") \
        == [(1000, 1000)]
    wait_owner(b)
    assert vigie_rows(b.uri, "SELECT count(*), count(DISTINCT (drone_id, seq)) FROM reports") \
        == [(1000, 1000)]
    check_against_oracle(b.uri, dump)
    # The same alerts, under the same dense ids.
    assert vigie_rows(b.uri, "SELECT count(*), min(id), max(id) FROM alerts") == alerts
    # A drone's retry sent to the new node is a duplicate.
    out = simulate(b.addr, *FLEET)
    assert "accepted=0 duplicates=1000" in out, out

    # More reports, a graceful stop (it flushes), and a third node: every report once.
    out = simulate(b.addr, *MORE)
    assert "accepted=300 duplicates=0" in out, out
    assert b.stop() == 0
    assert parquet_files(tmp_path) != []
    # b released its lease as it stopped: c owns the tenant from its start.
    c = start_vigie(*args, data_dir=tmp_path / "c")
    assert vigie_rows(c.uri, "SELECT count(*), count(DISTINCT (drone_id, seq)) FROM reports") \
        == [(1300, 1300)]
    n, lo, hi = vigie_rows(c.uri, "SELECT count(*), min(id), max(id) FROM alerts")[0]
    assert n > alerts[0][0] and (lo, hi) == (1, n), (n, lo, hi)
    out = simulate(c.addr, *FLEET)
    assert "accepted=0 duplicates=1000" in out, out


def test_a_paused_owner_steps_down_and_forwards(nats, start_vigie, tmp_path):
    args = node_args(tmp_path, nats)
    a = start_vigie(*args, data_dir=tmp_path / "a")
    out = simulate(a.addr, *FLEET)
    assert "accepted=1000" in out, out

    # The owner stops answering; another node takes over once the lease expires, and accepts
    # more (its stream claim fences the paused owner).
    os.kill(a.proc.pid, signal.SIGSTOP)
    try:
        b = start_vigie(*args, data_dir=tmp_path / "b")
        assert vigie_rows(b.uri, "SELECT count(*) FROM reports") == [(1000,)]
        wait_owner(b)
        out = simulate(b.addr, *MORE)
        assert "accepted=300 duplicates=0" in out, out
    finally:
        os.kill(a.proc.pid, signal.SIGCONT)

    # The old owner wakes up: its appends are refused (fenced), it finds its lease lost, steps
    # down, and from then on forwards its writes to b. A drone retrying gets them stored once.
    late = ("--drones", "5", "--reports-per-drone", "4", "--first-drone", "2000", "--seed", "9",
            "--start", "2026-01-01T00:00:00Z")
    deadline = time.time() + LEASE_TTL * 10
    while True:
        run = subprocess.run([vigie_bin(), "simulate", "--target", a.addr, *late],
                             capture_output=True, text=True, timeout=120)
        if run.returncode == 0:
            break
        # Fenced, or no owner known yet: retryable.
        assert "currently unavailable" in run.stderr, run.stderr
        assert time.time() < deadline, run.stderr
        time.sleep(0.5)
    assert "sent=20" in run.stdout and "duplicates=" in run.stdout, run.stdout
    wait_rows(b.uri, "SELECT count(*) FROM reports WHERE drone_id >= 'drone-02000'", [(20,)],
              timeout=10)

    # Both stop gracefully (a, a follower now, flushes nothing); a third node sees every
    # acknowledged report once.
    a.stop()
    b.stop()
    c = start_vigie(*args, data_dir=tmp_path / "c")
    assert vigie_rows(c.uri, "SELECT count(*), count(DISTINCT (drone_id, seq)) FROM reports") \
        == [(1320, 1320)]
    n, lo, hi = vigie_rows(c.uri, "SELECT count(*), min(id), max(id) FROM alerts")[0]
    assert (lo, hi) == (1, n), (n, lo, hi)


def test_the_stream_leader_killed_under_load_loses_nothing_acknowledged(
        nats, start_vigie, tmp_path, pb):
    vigie_pb2, vigie_grpc = pb
    a = start_vigie(*node_args(tmp_path, nats), data_dir=tmp_path / "a")
    stub = vigie_grpc.IngestStub(grpc.insecure_channel(a.addr))
    acknowledged, retried, duplicates = set(), 0, 0
    killed = None
    for batch in range(300):
        reports = []
        for k in range(10):
            report = vigie_pb2.DroneReport(drone_id=f"drone-{k}", seq=batch, latitude=48.85,
                                           longitude=2.35)
            report.time.FromSeconds(1_767_225_600 + batch * 60)
            reports.append(report)
        if batch == 100:
            # kill -9 the stream's leader: a new one is elected within seconds (the lease bucket
            # may lose its leader too: the node may step down, then take the tenant back).
            killed = nats.stream_leader("vigie-default")
            nats.procs[killed].kill()
        deadline = time.time() + 60
        while True:
            try:
                answer = stub.Write(vigie_pb2.WriteRequest(reports=reports), timeout=40)
                break
            except grpc.RpcError as e:
                # Refused writes are retryable; the drone sends the same reports again.
                assert e.code() in (grpc.StatusCode.UNAVAILABLE,
                                    grpc.StatusCode.DEADLINE_EXCEEDED), e
                assert time.time() < deadline, "writes never recovered after the leader died"
                retried += 1
                time.sleep(0.2)
        assert answer.accepted + answer.duplicates == 10, answer
        duplicates += answer.duplicates
        acknowledged.update((r.drone_id, r.seq) for r in reports)
    assert killed is not None
    assert len(acknowledged) == 3000
    assert vigie_rows(a.uri, "SELECT count(*), count(DISTINCT (drone_id, seq)) FROM reports") \
        == [(3000, 3000)]
    # And from the stream alone: a node with an empty data dir replays every one of them (once
    # the killed node's lease expired).
    a.kill()
    b = start_vigie(*node_args(tmp_path, nats), data_dir=tmp_path / "b")
    wait_rows(b.uri, "SELECT count(*), count(DISTINCT (drone_id, seq)) FROM reports",
              [(3000, 3000)], timeout=LEASE_TTL * 10)


def test_a_request_larger_than_a_stream_record_is_refused_and_the_log_goes_on(
        nats, start_vigie, tmp_path, pb):
    vigie_pb2, vigie_grpc = pb
    a = start_vigie(*node_args(tmp_path, nats), data_dir=tmp_path / "a")
    stub = vigie_grpc.IngestStub(grpc.insecure_channel(a.addr))

    def request(n, words):
        reports = []
        for seq in range(n):
            report = vigie_pb2.DroneReport(drone_id="big", seq=seq, latitude=1.0, longitude=2.0,
                                           words=words)
            report.time.FromSeconds(1_767_225_600 + seq)
            reports.append(report)
        return vigie_pb2.WriteRequest(reports=reports)

    # ~2 MB: over NATS's default max_payload of 1 MiB.
    with pytest.raises(grpc.RpcError) as refused:
        stub.Write(request(2000, ["x" * 1000]), timeout=30)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "send fewer reports per request" in refused.value.details()
    # Nothing of it was kept (a retry in smaller requests is not a duplicate), and writes go on.
    answer = stub.Write(request(200, ["x" * 1000]), timeout=30)
    assert (answer.accepted, answer.duplicates) == (200, 0)
    assert vigie_rows(a.uri, "SELECT count(*) FROM reports") == [(200,)]


def test_three_nodes_take_writes_and_the_owner_may_die_under_load(
        nats, start_vigie, tmp_path, pb):
    vigie_pb2, vigie_grpc = pb
    args = node_args(tmp_path, nats)
    nodes = [start_vigie(*args, data_dir=tmp_path / f"n{i}") for i in range(3)]
    stubs = [vigie_grpc.IngestStub(grpc.insecure_channel(n.addr)) for n in nodes]
    # The first node started owns the tenant; the others forward to it.
    owner = 0

    # A node-to-node call needs the cluster's secret.
    with pytest.raises(grpc.RpcError) as refused:
        stubs[1].Write(vigie_pb2.WriteRequest(), timeout=10,
                       metadata=[("authorization", "Cluster not-the-secret-at-all"),
                                 ("vigie-forwarded-tenant", "default"),
                                 ("vigie-forwarded-role", "drone"),
                                 ("vigie-forwarded-principal", "key:x")])
    assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED, refused.value

    def batch_of(n):
        return minute_batch(vigie_pb2, n)

    # Dispatchers subscribed at the two followers from the start (proxied to the owner).
    proxied_ids = {1: [], 2: []}

    def subscribe_at(i):
        stub = vigie_grpc.AlertsStub(grpc.insecure_channel(nodes[i].addr))
        stream = stub.Subscribe(vigie_pb2.SubscribeRequest(from_id=1), timeout=120)
        for alert in stream:
            proxied_ids[i].append(alert.id)
            if len(proxied_ids[i]) == 240:
                stream.cancel()
                return

    proxied = {i: threading.Thread(target=subscribe_at, args=(i,), daemon=True) for i in (1, 2)}
    for t in proxied.values():
        t.start()

    acknowledged, retries_before_kill, duplicates = 0, 0, 0
    for n in range(240):
        if n == 90:
            nodes[owner].kill()
        reports = batch_of(n)
        deadline = time.time() + 60
        target = n % 3
        while True:
            if target == owner and n >= 90:
                target = (target + 1) % 3
            try:
                answer = stubs[target].Write(vigie_pb2.WriteRequest(reports=reports), timeout=40)
                break
            except grpc.RpcError as e:
                # Refused writes are retryable; the drone sends them again, to another node.
                assert e.code() in (grpc.StatusCode.UNAVAILABLE,
                                    grpc.StatusCode.DEADLINE_EXCEEDED), e
                assert time.time() < deadline, f"writes never recovered after the owner died: {e}"
                if n < 90:
                    retries_before_kill += 1
                target = (target + 1) % 3
                time.sleep(0.2)
        assert answer.accepted + answer.duplicates == 10, answer
        duplicates += answer.duplicates
        acknowledged += 10
        if n == 50:
            # Read-your-writes on every node: the followers read the owner's stream tail.
            for node in nodes:
                assert vigie_rows(node.uri, "SELECT count(*), count(*) FILTER (WHERE seq = 50) "
                                            "FROM reports") == [(510, 10)], node.addr
                assert vigie_rows(node.uri, "SELECT count(*), max(id) FROM alerts") \
                    == [(51, 51)], node.addr
    # While the owner lived, every write through any node succeeded the first time.
    assert retries_before_kill == 0
    assert acknowledged == 2400
    # Drones whose acks were lost send their batches again, to another node than the first
    # time: every report of them is counted a duplicate, exactly.
    survivors = [i for i in range(3) if i != owner]
    for k, n in enumerate(range(0, 240, 6)):
        others = [i for i in survivors[k % 2:] + survivors[:k % 2] if i != n % 3]
        answer = stubs[others[0]].Write(
            vigie_pb2.WriteRequest(reports=batch_of(n)), timeout=40)
        assert (answer.accepted, answer.duplicates) == (0, 10), (n, answer)

    # One of the two survivors took the tenant over (replaying the stream), the other follows
    # it (reading the stream's tail): both see every report once, nothing is flushed yet.
    for i in survivors:
        assert vigie_rows(nodes[i].uri,
                          "SELECT count(*), count(DISTINCT (drone_id, seq)) FROM reports") \
            == [(2400, 2400)], i
        # Alert ids stay dense across the takeover: the replay re-derived the same ids, and so
        # did the follower.
        assert vigie_rows(nodes[i].uri, "SELECT count(*), min(id), max(id) FROM alerts") \
            == [(240, 1, 240)], i
    # A dispatcher subscribing from the start gets every id once, in order.
    alerts = vigie_grpc.AlertsStub(grpc.insecure_channel(nodes[survivors[0]].addr))
    stream = alerts.Subscribe(vigie_pb2.SubscribeRequest(from_id=1), timeout=30)
    ids = [next(stream).id for _ in range(240)]
    stream.cancel()
    assert ids == list(range(1, 241))
    # Subscribers of the followers got the same ids, once each, across the owner's death: one
    # of them was proxied to the old owner then served locally, the other resumed at the new one.
    for i in survivors:
        proxied[i].join(timeout=60)
        assert proxied_ids[i] == list(range(1, 241)), (i, proxied_ids[i][:5], len(proxied_ids[i]))

    # Graceful stops; a fresh node sees every acknowledged report once.
    for i in survivors:
        assert nodes[i].stop() == 0
    last = start_vigie(*args, data_dir=tmp_path / "last")
    assert vigie_rows(last.uri, "SELECT count(*), count(DISTINCT (drone_id, seq)) FROM reports") \
        == [(2400, 2400)]


def test_a_follower_reads_its_writes_while_the_owner_flushes(nats, start_vigie, tmp_path, pb):
    vigie_pb2, vigie_grpc = pb
    args = list(node_args(tmp_path, nats))
    # The owner commits every 200 ms (and purges the stream), the follower refreshes as often:
    # every answer must still count each acknowledged report exactly once.
    args[args.index("--flush-interval") + 1] = "200ms"
    a = start_vigie(*args, data_dir=tmp_path / "a")
    b = start_vigie(*args, data_dir=tmp_path / "b")
    stubs = [vigie_grpc.IngestStub(grpc.insecure_channel(n.addr)) for n in (a, b)]
    import adbc_driver_flightsql.dbapi as flightsql
    conns = [flightsql.connect(n.uri) for n in (a, b)]

    def batch(n):
        return minute_batch(vigie_pb2, n)

    try:
        for n in range(80):
            answer = stubs[n % 2].Write(vigie_pb2.WriteRequest(reports=batch(n)), timeout=30)
            assert (answer.accepted, answer.duplicates) == (10, 0), answer
            for i, conn in enumerate(conns):
                with conn.cursor() as cur:
                    cur.execute("SELECT count(*), count(DISTINCT (drone_id, seq)) FROM reports")
                    assert cur.fetchall() == [(10 * (n + 1), 10 * (n + 1))], (i, n)
                    cur.execute("SELECT count(*), min(id), max(id) FROM alerts")
                    assert cur.fetchall() == [(n + 1, 1, n + 1)], (i, n)
        # Writes the follower does not read for a while: the owner commits and purges them
        # from the stream, so the follower finds them in the owner's commits.
        for n in range(80, 120):
            answer = stubs[0].Write(vigie_pb2.WriteRequest(reports=batch(n)), timeout=30)
            assert (answer.accepted, answer.duplicates) == (10, 0), answer
            time.sleep(0.02)
        time.sleep(1)
        with conns[1].cursor() as cur:
            cur.execute("SELECT count(*), count(DISTINCT (drone_id, seq)) FROM reports")
            assert cur.fetchall() == [(1200, 1200)]
            cur.execute("SELECT count(*), min(id), max(id) FROM alerts")
            assert cur.fetchall() == [(120, 1, 120)]
    finally:
        for conn in conns:
            conn.close()
    # The owner did commit meanwhile: the follower's answers came from files and tail together,
    # and its stream holds nothing that a takeover would have to replay.
    assert parquet_files(tmp_path) != []
    assert metric(a, 'vigie_stream_lag_records{stream="vigie-default"}') == 0


def test_a_stream_option_error_is_clear(tmp_path):
    out = subprocess.run(
        [vigie_bin(), "serve", "--data-dir", str(tmp_path), "--grpc-addr", "127.0.0.1:0",
         "--stream", "nats://127.0.0.1:1", "--wal", "off"],
        capture_output=True, text=True, timeout=60,
    )
    assert out.returncode != 0
    assert "drop --wal" in out.stderr, out.stderr


def cluster_admin(tmp_path, nats, *more):
    """`vigie admin` from a machine with no node's data dir: the credentials live in NATS; the
    audit events go to the lake `tmp_path/lake`."""
    lake = tmp_path / "lake"
    out = subprocess.run([vigie_bin(), "admin", "--data-dir", str(tmp_path / "admin"),
                          "--object-store", lake.as_uri() + "/", "--stream", str(nats),
                          *more], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return out.stdout


def test_the_credentials_are_the_clusters_and_a_prefix_keeps_deployments_apart(
        nats, start_vigie, tmp_path, pb):
    vigie_pb2, vigie_grpc = pb
    lake = tmp_path / "lake"
    lake.mkdir()

    def admin(*more):
        return cluster_admin(tmp_path, nats, *more)

    def new_key(role):
        lines = admin("create-key", "--tenant", "north", "--role", role).strip().splitlines()
        return lines[-2].split(" key ")[1].split()[0], lines[-1]

    admin("create-tenant", "north")
    drone_id, drone = new_key("drone")
    _, reader = new_key("analyst")
    assert drone_id in admin("list")
    assert not (tmp_path / "admin" / "auth.json").exists()

    args = node_args(tmp_path, nats)
    a = start_vigie(*args, data_dir=tmp_path / "a")
    b = start_vigie(*args, data_dir=tmp_path / "b")
    # Both nodes know the key; a, started first, owns north and b forwards to it.
    for node in (a, b):
        out = simulate(node.addr, *FLEET, "--api-key", drone)
        assert "sent=1000" in out and "rejected=0" in out, out
    as_reader = {"adbc.flight.sql.authorization_header": f"Bearer {reader}"}
    import adbc_driver_flightsql.dbapi as flightsql
    with flightsql.connect(a.uri, db_kwargs=as_reader) as conn, conn.cursor() as cur:
        cur.execute("SELECT count(*), count(DISTINCT (drone_id, seq)) FROM reports")
        assert cur.fetchall() == [(1000, 1000)]

    # A key revoked on one machine is refused by every node within a second or so.
    admin("revoke-key", drone_id)
    stubs = [vigie_grpc.IngestStub(grpc.insecure_channel(n.addr)) for n in (a, b)]
    deadline = time.time() + 10
    for stub in stubs:
        while True:
            try:
                stub.Write(vigie_pb2.WriteRequest(), timeout=10,
                           metadata=[("authorization", f"Bearer {drone}")])
            except grpc.RpcError as e:
                assert e.code() == grpc.StatusCode.UNAUTHENTICATED, e
                assert "revoked" in e.details(), e.details()
                break
            assert time.time() < deadline, "a revoked key was still accepted"
            time.sleep(0.1)

    # Another deployment on the same NATS cluster, under its own prefix, sees none of it: no
    # credentials (the open mode), its own lake, streams and buckets.
    other_lake = tmp_path / "other-lake"
    other_lake.mkdir()
    other_args = list(args)
    other_args[other_args.index("--object-store") + 1] = other_lake.as_uri() + "/"
    c = start_vigie(*other_args, "--stream-prefix", "other", data_dir=tmp_path / "c")
    out = simulate(c.addr, *MORE)
    assert "accepted=300 duplicates=0" in out, out
    assert vigie_rows(c.uri, "SELECT count(*) FROM reports") == [(300,)]
    streams = set()
    url = f"http://127.0.0.1:{nats.monitor[0]}/jsz?streams=true"
    with urllib.request.urlopen(url, timeout=2) as r:
        for account in json.load(r).get("account_details", []):
            streams |= {s["name"] for s in account.get("stream_detail", [])}
    assert streams == {"vigie-north", "KV_vigie-leases", "KV_vigie-auth", "KV_vigie-checkpoints",
                       "other-default", "KV_other-leases", "KV_other-auth",
                       "KV_other-checkpoints"}, streams


def health_status(node, service):
    from grpc_health.v1 import health_pb2, health_pb2_grpc
    with grpc.insecure_channel(node.addr) as channel:
        answer = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=service), timeout=10)
    return health_pb2.HealthCheckResponse.ServingStatus.Name(answer.status)


def run_simulate(node, *args):
    return subprocess.run([vigie_bin(), "simulate", "--target", node.addr, *args],
                          capture_output=True, text=True, timeout=120)


def test_roles_split_ingest_processing_and_queries(nats, start_vigie, tmp_path):
    args = node_args(tmp_path, nats)
    # The ingest and query nodes start first: neither takes the tenant, which waits for p.
    i = start_vigie(*args, "--role", "ingest", data_dir=tmp_path / "i")
    q = start_vigie(*args, "--role", "query", data_dir=tmp_path / "q")
    p = start_vigie(*args, "--role", "process", data_dir=tmp_path / "p")
    wait_owner(p)
    for node in (i, q):
        assert 'vigie_cluster_owner{tenant="default"} 0' in urllib.request.urlopen(
            f"http://{node.metrics}/metrics", timeout=5).read().decode().splitlines()

    # Drones write through the ingest node only; it forwards to the processing node.
    out = simulate(i.addr, *FLEET)
    assert "accepted=1000 duplicates=0" in out, out
    for node in (p, q):
        run = run_simulate(node, *MORE)
        assert run.returncode != 0 and "takes no writes from drones" in run.stderr, run.stderr
    # SQL on the query node only, seeing the processing node's unflushed reports.
    assert vigie_rows(q.uri, "SELECT count(*), count(DISTINCT (drone_id, seq)) FROM reports") \
        == [(1000, 1000)]
    for node in (i, p):
        with pytest.raises(Exception, match="answers no SQL"):
            vigie_rows(node.uri, "SELECT 1")
    # Load balancers see the same.
    assert [health_status(n, "vigie.v1.Ingest") for n in (i, p, q)] \
        == ["SERVING", "NOT_SERVING", "NOT_SERVING"]
    assert [health_status(n, "arrow.flight.protocol.FlightService") for n in (i, p, q)] \
        == ["NOT_SERVING", "NOT_SERVING", "SERVING"]

    # The processing node dies: the others never take the tenant over, writes wait for a node
    # that may process it; a new one takes it over and nothing acknowledged was lost.
    p.kill()
    time.sleep(LEASE_TTL * 2)
    run = run_simulate(i, *MORE)
    assert run.returncode != 0 and "currently unavailable" in run.stderr, run.stderr
    assert vigie_rows(q.uri, "SELECT count(*) FROM reports") == [(1000,)]
    r = start_vigie(*args, "--role", "process,ingest", data_dir=tmp_path / "r")
    wait_owner(r)
    out = simulate(i.addr, *MORE)
    assert "accepted=300 duplicates=0" in out, out
    out = simulate(r.addr, *FLEET)
    assert "accepted=0 duplicates=1000" in out, out
    assert vigie_rows(q.uri, "SELECT count(*), count(DISTINCT (drone_id, seq)) FROM reports") \
        == [(1300, 1300)]


def test_a_role_needs_cluster_mode(tmp_path):
    out = subprocess.run(
        [vigie_bin(), "serve", "--data-dir", str(tmp_path), "--grpc-addr", "127.0.0.1:0",
         "--role", "query"],
        capture_output=True, text=True, timeout=60,
    )
    assert out.returncode != 0
    assert "--role is for cluster mode" in out.stderr, out.stderr
    out = subprocess.run([vigie_bin(), "serve", "--role", "reader"], capture_output=True,
                         text=True, timeout=60)
    assert out.returncode != 0 and "ingest, process, query" in out.stderr, out.stderr


def test_the_webhook_follows_the_owner(nats, start_vigie, tmp_path):
    """Only the owner posts a tenant's alerts; after a kill -9 the new owner resumes from the
    cluster's checkpoint: every alert is posted, in order, and only the last second's before the
    kill may be posted twice."""
    from test_webhook import Receiver
    receiver = Receiver()
    try:
        args = (*node_args(tmp_path, nats), "--alert-webhook", receiver.url)
        a = start_vigie(*args, data_dir=tmp_path / "a")
        b = start_vigie(*args, data_dir=tmp_path / "b")
        out = simulate(b.addr, *FLEET)  # forwarded to a, the owner
        assert "accepted=1000" in out, out
        (first,), = vigie_rows(b.uri, "SELECT count(*) FROM alerts")
        receiver.wait_for(range(1, first + 1))
        assert receiver.ids() == list(range(1, first + 1))

        time.sleep(1.5)  # the checkpoint is written at most once a second
        receiver.refuse = True
        out = simulate(a.addr, *MORE)
        assert "accepted=300" in out, out
        (total,), = vigie_rows(b.uri, "SELECT count(*) FROM alerts")
        assert total > first
        a.kill()  # with alerts first+1.. undelivered
        receiver.refuse = False
        wait_owner(b)
        receiver.wait_for(range(1, total + 1))
        ids = receiver.ids()
        assert ids[:first] == list(range(1, first + 1))
        assert ids[first:] == list(range(first + 1, total + 1)), ids[first:]
    finally:
        receiver.close()


def owner_of(nodes, tenant="default"):
    """The index of the live node that owns `tenant` now, None if none does."""
    for i, node in enumerate(nodes):
        if node.proc.poll() is None and \
                metric(node, f'vigie_cluster_owner{{tenant="{tenant}"}}') == 1:
            return i
    return None


def test_the_owner_killed_again_and_again_loses_nothing(nats, start_vigie, tmp_path, pb):
    """Three kill -9s of whichever node owns the tenant, under load through every live node,
    each replaced by a fresh node: every acknowledged report stored once, alert ids dense, and a
    dispatcher on a node that never owns (role ingest,query) gets every alert once, in order."""
    vigie_pb2, vigie_grpc = pb
    args = node_args(tmp_path, nats)
    gateway = start_vigie(*args, "--role", "ingest,query", data_dir=tmp_path / "gateway")
    nodes = [gateway] + [start_vigie(*args, data_dir=tmp_path / f"n{i}") for i in (1, 2)]
    wait_owner(nodes[1])
    received, failed = [], []

    def subscribe():
        stub = vigie_grpc.AlertsStub(grpc.insecure_channel(gateway.addr))
        try:
            for alert in stub.Subscribe(vigie_pb2.SubscribeRequest(from_id=1), timeout=300):
                received.append(alert.id)
                if len(received) == 240:
                    return
        except grpc.RpcError as e:
            failed.append(e)

    dispatcher = threading.Thread(target=subscribe, daemon=True)
    dispatcher.start()
    kills = 0
    for n in range(240):
        if n in (60, 120, 180):
            victim = owner_of(nodes)
            assert victim not in (None, 0), victim
            nodes[victim].kill()
            nodes[victim] = start_vigie(*args, data_dir=tmp_path / f"n{victim}-{n}")
            kills += 1
        deadline = time.time() + 60
        target = n % 3
        while True:
            try:
                answer = vigie_grpc.IngestStub(grpc.insecure_channel(nodes[target].addr)).Write(
                    vigie_pb2.WriteRequest(reports=minute_batch(vigie_pb2, n)), timeout=40)
                break
            except grpc.RpcError as e:
                assert e.code() in (grpc.StatusCode.UNAVAILABLE,
                                    grpc.StatusCode.DEADLINE_EXCEEDED), e
                assert time.time() < deadline, f"writes never recovered: {e}"
                target = (target + 1) % 3
                time.sleep(0.2)
        assert answer.accepted + answer.duplicates == 10, answer
    assert kills == 3
    for node in nodes:
        assert vigie_rows(node.uri,
                          "SELECT count(*), count(DISTINCT (drone_id, seq)) FROM reports") \
            == [(2400, 2400)], node.addr
    assert vigie_rows(gateway.uri, "SELECT count(*), min(id), max(id) FROM alerts") \
        == [(240, 1, 240)]
    dispatcher.join(timeout=60)
    assert received == list(range(1, 241)), (len(received), received[:5], failed)


def test_an_acknowledgement_reaches_the_consoles_of_every_node(nats, start_vigie, tmp_path, pb):
    """An operator acknowledges an alert on one node's console: a console open on another node
    receives it live on its alert stream (within that node's flush interval), without a reload."""
    import requests
    vigie_pb2, vigie_grpc = pb
    args = list(node_args(tmp_path, nats))
    args[args.index("--flush-interval") + 1] = "200ms"
    a = start_vigie(*args, "--console-addr", "127.0.0.1:0", data_dir=tmp_path / "a")
    b = start_vigie(*args, "--console-addr", "127.0.0.1:0", data_dir=tmp_path / "b")
    wait_owner(a)
    stub = vigie_grpc.IngestStub(grpc.insecure_channel(b.addr))
    answer = stub.Write(vigie_pb2.WriteRequest(reports=minute_batch(vigie_pb2, 0)), timeout=30)
    assert answer.accepted == 10, answer
    # b's console (open mode: no login) listens before the operator acts on a's.
    events, opened = [], threading.Event()

    def listen():
        with requests.get(b.console + "api/alerts/stream", stream=True, timeout=60) as r:
            opened.set()
            kind = None
            for line in r.iter_lines(decode_unicode=True):
                if line.startswith("event: "):
                    kind = line[7:]
                elif line.startswith("data: ") and kind == "alert-event":
                    events.append(json.loads(line[6:]))
                    return

    listener = threading.Thread(target=listen, daemon=True)
    listener.start()
    assert opened.wait(30)  # the response starts once the stream is subscribed
    r = requests.post(a.console + "api/alerts/1/ack", json={"action": "ack", "note": "unit 7"},
                      timeout=30)
    assert r.status_code == 200, r.text
    listener.join(timeout=20)
    assert [(e["alert_id"], e["state"], e["note"]) for e in events] == [(1, "ack", "unit 7")]
    # And b's feed, read by SQL, has the same state.
    r = requests.get(b.console + "api/alerts", timeout=30)
    assert [(x["id"], x["state"], x["note"]) for x in r.json()["alerts"]] == [(1, "ack", "unit 7")]


def test_the_daily_report_is_mailed_once_by_the_tenants_owner(nats, start_vigie, tmp_path):
    """Every node runs the morning mail, but only the tenant's owner sends, and the send is
    recorded in the cluster's checkpoints: after the owner is killed, its successor sends
    nothing again."""
    from conftest import until
    from test_report import Sink
    lake = tmp_path / "lake"
    lake.mkdir()

    def admin(*more):
        return cluster_admin(tmp_path, nats, *more)

    admin("create-tenant", "north")
    admin("set-report", "--tenant", "north", "--to", "chief@north.test", "--at", "00:00",
          "--tz", "Europe/Paris")
    sink = Sink()
    try:
        args = (*node_args(tmp_path, nats), "--smtp-url", sink.url)
        nodes = [start_vigie(*args, data_dir=tmp_path / name) for name in ("a", "b")]
        until("the owner's mail", lambda: len(sink.mails) == 1, timeout=90)
        owner = owner_of(nodes, "north")
        assert owner is not None
        time.sleep(3)
        assert len(sink.mails) == 1, "the follower does not send"
        nodes[owner].kill()
        successor = nodes[1 - owner]
        wait_owner(successor, "north")
        time.sleep(7)  # the successor looks at the schedule every 5 s
        assert len(sink.mails) == 1, "the send is the cluster's: not again"
        assert sink.mails[0].rcpt_tos == ["chief@north.test"]
    finally:
        sink.stop()
