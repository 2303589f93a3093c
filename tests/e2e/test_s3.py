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
