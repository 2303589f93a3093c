"""The lake on a real S3 implementation (SeaweedFS, loopback only): ingest, query, and a restart
whose only state is in S3 (a fresh data dir), with dedupe rebuilt from the stored reports."""

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from pyarrow import fs

from conftest import simulate
from test_slice import check_against_oracle, vigie_rows

KEY, SECRET = "vigie-test", "vigie-test-secret"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def s3(tmp_path):
    weed = shutil.which("weed") or str(Path(sys.executable).parent / "weed")
    port = free_port()
    env = dict(os.environ, AWS_ACCESS_KEY_ID=KEY, AWS_SECRET_ACCESS_KEY=SECRET, S3_BUCKET="lake")
    (tmp_path / "weed").mkdir()
    proc = subprocess.Popen(
        [weed, "mini", f"-dir={tmp_path / 'weed'}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
         "-master.telemetry=false", "-admin.ui=false", "-webdav=false", f"-s3.port={port}"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    endpoint = f"http://127.0.0.1:{port}"
    deadline = time.time() + 60
    # Ready once the bucket `lake` exists (SeaweedFS creates it shortly after it starts serving).
    s3fs = fs.S3FileSystem(access_key=KEY, secret_key=SECRET, endpoint_override=endpoint,
                           scheme="http", region="us-east-1")
    while True:
        try:
            if s3fs.get_file_info("lake").type == fs.FileType.Directory:
                break
        except OSError:
            pass
        assert proc.poll() is None, "SeaweedFS exited"
        assert time.time() < deadline, "SeaweedFS did not create the bucket"
        time.sleep(0.3)
    yield {
        "AWS_ACCESS_KEY_ID": KEY, "AWS_SECRET_ACCESS_KEY": SECRET, "AWS_REGION": "us-east-1",
        "AWS_ENDPOINT_URL": endpoint, "AWS_ALLOW_HTTP": "true",
    }
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()


def test_lake_on_s3_survives_a_restart_with_a_fresh_data_dir(s3, start_vigie, tmp_path, monkeypatch):
    for k, v in s3.items():
        monkeypatch.setenv(k, v)
    fleet = ["--drones", "20", "--reports-per-drone", "60", "--seed", "3",
             "--start", "2026-05-01T23:30:00Z"]
    dump = tmp_path / "fleet.jsonl"
    vigie = start_vigie("--object-store", "s3://lake/vigie", "--flush-interval", "300ms",
                        data_dir=tmp_path / "first")
    out = simulate(vigie.addr, *fleet, "--dump", str(dump))
    assert "accepted=1200 duplicates=0" in out, out
    check_against_oracle(vigie.uri, dump)
    assert vigie.stop() == 0

    vigie = start_vigie("--object-store", "s3://lake/vigie", data_dir=tmp_path / "second")
    check_against_oracle(vigie.uri, dump)
    assert vigie_rows(vigie.uri, "SELECT count(*) FROM reports") == [(1200,)]
    out = simulate(vigie.addr, *fleet)
    assert "accepted=0 duplicates=1200" in out, out


def test_two_servers_share_one_s3_table_then_compaction(s3, start_vigie, tmp_path, monkeypatch):
    """Two `vigie serve` (own data dir and WAL each) commit to the same S3 tables at the same time:
    no commit is lost. Then `vigie compact` on S3 keeps every answer."""
    from conftest import vigie_bin

    for k, v in s3.items():
        monkeypatch.setenv(k, v)
    lake = "s3://lake/shared"
    servers = [start_vigie("--object-store", lake, "--flush-interval", "200ms",
                           "--compact-interval", "0s", data_dir=tmp_path / f"server{i}")
               for i in range(2)]
    fleet = ["--drones", "10", "--reports-per-drone", "200", "--seed", "5",
             "--start", "2026-05-01T20:00:00Z", "--batch", "50", "--rate", "2000"]
    dumps = [tmp_path / f"fleet{i}.jsonl" for i in range(2)]
    sims = [subprocess.Popen([vigie_bin(), "simulate", "--target", s.addr, *fleet,
                              "--first-drone", str(10 * i), "--dump", str(dumps[i])],
                             stdout=subprocess.PIPE, text=True)
            for i, s in enumerate(servers)]
    for sim in sims:
        out, _ = sim.communicate(timeout=120)
        assert sim.returncode == 0 and "accepted=2000 duplicates=0" in out, out
    for s in servers:
        assert s.stop() == 0
    dump = tmp_path / "fleet.jsonl"
    dump.write_text("".join(d.read_text() for d in dumps))

    # A third server with a fresh data dir sees both servers' rows, each once.
    vigie = start_vigie("--object-store", lake, "--compact-interval", "0s",
                        "--flush-interval", "1s", data_dir=tmp_path / "reader")
    assert vigie_rows(vigie.uri, "SELECT count(*), count(DISTINCT drone_id || ':' || seq) FROM reports") \
        == [(4000, 4000)]
    check_against_oracle(vigie.uri, dump)

    out = subprocess.run([vigie_bin(), "compact", "--data-dir", str(tmp_path / "compactor"),
                          "--object-store", lake, "--vacuum-after", "0s"],
                         check=True, capture_output=True, text=True, timeout=300).stdout
    assert "default/reports: days_expired=0 days_compacted=1 " in out, out
    time.sleep(2.5)  # the idle reader catches up at its next flush interval
    check_against_oracle(vigie.uri, dump)
