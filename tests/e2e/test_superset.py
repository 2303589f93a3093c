"""Apache Superset against Vigie: register the database with flightsql-dbapi's SQLAlchemy dialect,
list its tables, run a chart's query through SQL Lab's API, and compare the rows with DuckDB's.

Superset runs from its own venv (`.venv-superset`, made by scripts/test.sh: its pins conflict with
the other clients'), on loopback, with a throwaway SQLite metadata database.
"""

import json
import os
import socket
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

from conftest import ROOT, oracle_rows, simulate

SUPERSET = Path(os.environ.get("SUPERSET_VENV", ROOT / ".venv-superset")) / "bin" / "superset"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Api:
    """Superset's REST API with a logged-in browser session (its cookie)."""

    def __init__(self, base: str):
        import http.cookiejar

        self.base = base
        self.opener = urllib.request.build_opener(
            urllib.request.HTTPCookieProcessor(http.cookiejar.CookieJar()))

    def login(self, user: str, password: str):
        form = urllib.parse.urlencode({"username": user, "password": password}).encode()
        with self.opener.open(self.base + "/login/", data=form, timeout=120) as r:
            assert r.status == 200

    def call(self, method: str, path: str, body=None):
        request = urllib.request.Request(
            self.base + path, method=method,
            data=None if body is None else json.dumps(body).encode(),
            headers={"Content-Type": "application/json"})
        try:
            with self.opener.open(request, timeout=120) as r:
                return json.loads(r.read())
        except urllib.error.HTTPError as e:
            raise AssertionError(f"{method} {path}: {e.code} {e.read().decode()}") from None


@pytest.fixture(scope="module")
def superset(tmp_path_factory):
    if not SUPERSET.exists():
        pytest.fail(f"{SUPERSET} is missing: scripts/test.sh installs Superset")
    home = tmp_path_factory.mktemp("superset")
    config = home / "superset_config.py"
    config.write_text(
        "SECRET_KEY = 'vigie-test-only-secret-key-0123456789abcdef'\n"
        f"SQLALCHEMY_DATABASE_URI = 'sqlite:///{home / 'superset.db'}'\n"
        "WTF_CSRF_ENABLED = False\n"
        "TALISMAN_ENABLED = False\n"
        "PREVENT_UNSAFE_DB_CONNECTIONS = False\n"
    )
    env = {**os.environ, "SUPERSET_CONFIG_PATH": str(config), "SUPERSET_HOME": str(home),
           "FLASK_APP": "superset", "SUPERSET_LOAD_EXAMPLES": "no"}
    run = lambda *args: subprocess.run([str(SUPERSET), *args], env=env, check=True,  # noqa: E731
                                       capture_output=True, text=True, timeout=600)
    run("db", "upgrade")
    run("fab", "create-admin", "--username", "admin", "--firstname", "A", "--lastname", "B",
        "--email", "admin@example.invalid", "--password", "admin")
    run("init")
    port = free_port()
    log = open(home / "superset.log", "w")
    proc = subprocess.Popen([str(SUPERSET), "run", "-h", "127.0.0.1", "-p", str(port),
                             "--without-threads"], env=env, stdout=log, stderr=subprocess.STDOUT)
    api = Api(f"http://127.0.0.1:{port}")
    deadline = time.time() + 120
    while True:
        try:
            with urllib.request.urlopen(f"{api.base}/health", timeout=5) as r:
                if r.status == 200:
                    break
        except OSError:
            pass
        assert proc.poll() is None, (home / "superset.log").read_text()
        assert time.time() < deadline, "Superset did not start"
        time.sleep(0.5)
    api.login("admin", "admin")
    yield api
    proc.terminate()
    proc.wait(timeout=30)


def test_superset_lists_vigie_tables_and_runs_a_chart_query(superset, start_vigie, tmp_path):
    vigie = start_vigie()
    dump = tmp_path / "fleet.jsonl"
    simulate(vigie.uri, "--drones", "12", "--reports-per-drone", "30", "--dump", str(dump))

    database = superset.call("POST", "/api/v1/database/", {
        "database_name": "vigie",
        "sqlalchemy_uri": f"datafusion://{vigie.addr}?insecure=true",
        "expose_in_sqllab": True,
    })
    database_id = database["id"]
    listed = superset.call("GET", "/api/v1/database/")
    assert database_id in listed["ids"], listed

    schemas = superset.call("GET", f"/api/v1/database/{database_id}/schemas/")["result"]
    assert "public" in schemas, schemas
    tables = superset.call(
        "GET", f"/api/v1/database/{database_id}/tables/?q=(force:!t,schema_name:public)")
    names = {t["value"] for t in tables["result"]}
    assert {"reports", "sightings", "alerts", "reports_hourly"} <= names, names

    # The query a "sightings per drone" bar chart runs.
    chart = ("SELECT drone_id, count(*) AS sightings, min(score) AS lowest FROM sightings "
             "GROUP BY drone_id ORDER BY drone_id")
    result = superset.call("POST", "/api/v1/sqllab/execute/", {
        "database_id": database_id, "sql": chart, "schema": "public", "runAsync": False,
    })
    assert result["status"] == "success", result
    got = [(r["drone_id"], r["sightings"], r["lowest"]) for r in result["data"]]
    want = oracle_rows(dump, "SELECT drone_id, count(*), min(c.score) FROM dump, "
                             "unnest(citizens) AS t(c) GROUP BY drone_id ORDER BY drone_id")
    assert got == [(d, n, pytest.approx(s)) for d, n, s in want]
    assert len(got) == 12
