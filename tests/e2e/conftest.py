"""Fixtures: the real `vigie` binary on port 0 in a temp dir, and its simulator."""

import importlib
import os
import signal
import subprocess
import time
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def vigie_bin() -> str:
    path = os.environ.get("VIGIE_BIN")
    if path:
        return path
    target = os.environ.get("CARGO_TARGET_DIR", str(ROOT / "target"))
    return str(Path(target) / "debug" / "vigie")


class Vigie:
    """A running `vigie serve`; stopped with SIGTERM (graceful) or killed at teardown."""

    def __init__(self, data_dir: Path, *args: str, wait_ready: bool = True):
        self.data_dir = data_dir
        self.args = args
        self.proc = subprocess.Popen(
            [vigie_bin(), "serve", "--data-dir", str(data_dir), "--grpc-addr", "127.0.0.1:0", *args],
            stdout=subprocess.PIPE,
            text=True,
        )
        line = self.proc.stdout.readline().strip()
        prefix = "listening on "
        assert line.startswith(prefix) and "://" in line, f"unexpected first line {line!r}"
        self.scheme, self.addr = line[len(prefix):].split("://", 1)
        self.metrics = None
        if "--metrics-addr" in args:
            line = self.proc.stdout.readline().strip()
            assert line.startswith("metrics on http://"), line
            self.metrics = line.removeprefix("metrics on http://").removesuffix("/metrics")
        self.console = None
        if "--console-addr" in args:
            line = self.proc.stdout.readline().strip()
            assert line.startswith("console on http://"), line
            self.console = line.removeprefix("console on ")
        if wait_ready:
            self.wait_ready()

    def wait_ready(self):
        """Waits for the `ready` line: the WAL is replayed and the tenants are open."""
        line = self.proc.stdout.readline().strip()
        assert line == "ready", f"unexpected line {line!r} (exit code {self.proc.poll()})"

    @property
    def uri(self) -> str:
        return f"{self.scheme}://{self.addr}"

    def stop(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=60)

    def kill(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture
def start_vigie(tmp_path):
    started = []

    def start(*args: str, data_dir: Path | None = None) -> Vigie:
        v = Vigie(data_dir or tmp_path / "data", *args)
        started.append(v)
        return v

    yield start
    for v in started:
        v.kill()


def vigie_query(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    """Runs `vigie query` with `args`."""
    return subprocess.run([vigie_bin(), "query", *args], check=check, capture_output=True,
                          text=True, timeout=60)


def simulate(target: str | None, *args: str) -> str:
    cmd = [vigie_bin(), "simulate", *args]
    if target:
        cmd += ["--target", target]
    out = subprocess.run(cmd, capture_output=True, text=True)
    assert out.returncode == 0, f"{cmd} exited {out.returncode}: {out.stderr[:3000]}"
    return out.stdout


# The columns of `vigie simulate --dump` JSON lines, for DuckDB's read_json.
DUMP_COLUMNS = (
    "{drone_id: 'VARCHAR', seq: 'BIGINT', time: 'TIMESTAMPTZ', latitude: 'DOUBLE', "
    "longitude: 'DOUBLE', citizens: 'STRUCT(name VARCHAR, score DOUBLE)[]', words: 'VARCHAR[]'}"
)


def until(what, check, timeout=20):
    """Polls `check` until it holds (from Python: the console's CSP forbids the eval of
    Playwright's `wait_for_function`)."""
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def oracle_rows(dump, sql: str, parameters=None):
    """Rows of `sql` in DuckDB over the dumped reports, as the view `dump`."""
    import duckdb

    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    con.execute(f"CREATE VIEW dump AS SELECT * FROM read_json('{dump}', columns = {DUMP_COLUMNS})")
    return [tuple(r) for r in con.execute(sql, parameters).fetchall()]


@pytest.fixture(scope="module")
def pb(tmp_path_factory):
    """Python stubs of the vigie.v1 contract, generated at test time."""
    out = tmp_path_factory.mktemp("stubs")
    subprocess.run(
        [sys.executable, "-m", "grpc_tools.protoc", f"-I{ROOT / 'proto'}",
         f"--python_out={out}", f"--grpc_python_out={out}", "vigie/v1/vigie.proto"],
        check=True,
    )
    sys.path.insert(0, str(out))
    return (importlib.import_module("vigie.v1.vigie_pb2"),
            importlib.import_module("vigie.v1.vigie_pb2_grpc"))
