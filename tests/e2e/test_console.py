"""The web console in a real browser: Debian's chromium driven by Playwright against the real
binary on port 0, every non-loopback request blocked and asserted absent.

Two tenants (north, south); north's analyst `ana`, admin `boss`, south's analyst `sam`. Reports
come from `vigie simulate` and from gRPC writes of the test; DuckDB over the simulator's dump is
the oracle of the SQL console's numbers. Screenshots of each page go to
`$VIGIE_TEST_OUTPUT/console/` (default: `target/test-output/console/`).
"""

import json
import os
import re
import socket
import subprocess
import threading
import time
from pathlib import Path
from urllib.parse import urlparse

import grpc
import pytest
import requests
from google.protobuf.timestamp_pb2 import Timestamp

from conftest import ROOT, Vigie, oracle_rows, simulate, until, vigie_bin
from test_tenants import PASSWORDS, admin, new_key

playwright_api = pytest.importorskip("playwright.sync_api")

CHROMIUM = "/usr/bin/chromium"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run",
         "--disable-dev-shm-usage"]
SHOTS = Path(os.environ.get("VIGIE_TEST_OUTPUT", ROOT / "target" / "test-output")) / "console"


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    data = tmp_path_factory.mktemp("console") / "data"
    admin(data, "create-tenant", "north")
    admin(data, "create-tenant", "south")
    for user, tenant, role in [("ana", "north", "analyst"), ("boss", "north", "admin"),
                               ("sam", "south", "analyst")]:
        admin(data, "create-user", "--tenant", tenant, "--role", role, user,
              stdin=PASSWORDS[user] + "\n")
    keys = {t: new_key(data, t, "drone")[1] for t in ("north", "south")}
    vigie = Vigie(data, "--flush-interval", "500ms", "--console-addr", "127.0.0.1:0")
    dump = tmp_path_factory.mktemp("dump") / "north.jsonl"
    start = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() - 30 * 60))
    simulate(vigie.addr, "--drones", "12", "--reports-per-drone", "30", "--start", start,
             "--dump", str(dump), "--api-key", keys["north"])
    simulate(vigie.addr, "--drones", "5", "--first-drone", "500", "--reports-per-drone", "30",
             "--start", start, "--seed", "7", "--api-key", keys["south"])
    yield {"vigie": vigie, "keys": keys, "dump": dump, "data": data}
    vigie.kill()


@pytest.fixture(scope="module")
def browser():
    SHOTS.mkdir(parents=True, exist_ok=True)
    with playwright_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        yield b
        b.close()


class Page:
    """One logged-in console tab; records and refuses every request that leaves loopback."""

    def __init__(self, browser, base, user=None, key=None):
        self.context = browser.new_context(viewport={"width": 1280, "height": 800})
        self.outside = []

        def route(r):
            host = urlparse(r.request.url).hostname
            if host in ("127.0.0.1", "localhost", None) or r.request.url.startswith("data:"):
                r.continue_()
            else:
                self.outside.append(r.request.url)
                r.abort()

        self.context.route("**/*", route)
        self.page = self.context.new_page()
        self.errors = []
        self.page.on("pageerror", lambda e: self.errors.append(str(e)))
        self.notes = []
        self.page.on("dialog", lambda d: d.accept(self.notes.pop(0) if self.notes else ""))
        self.page.goto(base)
        if user:
            self.page.fill("input[name=user]", user)
            self.page.fill("input[name=password]", PASSWORDS[user])
        else:
            self.page.fill("input[name=api_key]", key)
        self.page.click("#login-form button")
        self.page.wait_for_selector("body[data-ready=true]", timeout=20000)
        assert self.page.is_hidden("#login") and self.page.is_visible("#app")

    def close(self):
        assert self.outside == [], f"requests left loopback: {self.outside}"
        assert self.errors == [], self.errors
        self.context.close()


def marker_ids(p):
    return p.eval_on_selector_all("[data-drone]", "els => els.map(e => e.dataset.drone)")


def write(vigie, key, pb, reports):
    vigie_pb2, vigie_grpc = pb
    with grpc.insecure_channel(vigie.addr) as channel:
        stub = vigie_grpc.IngestStub(channel)
        response = stub.Write(vigie_pb2.WriteRequest(reports=reports),
                              metadata=[("authorization", f"Bearer {key}")], timeout=30)
        assert response.accepted == len(reports), response


def report(pb, drone, seq, lat, lon, citizens=(), words=()):
    vigie_pb2, _ = pb
    ts = Timestamp()
    ts.GetCurrentTime()
    return vigie_pb2.DroneReport(
        drone_id=drone, seq=seq, time=ts, latitude=lat, longitude=lon, words=list(words),
        citizens=[vigie_pb2.Citizen(name=n, score=s) for n, s in citizens])


def api(base, user, path, body=None):
    s = requests.Session()
    r = s.post(base + "api/login", json={"user": user, "password": PASSWORDS[user]})
    assert r.status_code == 200, r.text
    return s, (s.post(base + "api" + path, json=body) if body is not None
               else s.get(base + "api" + path))


def test_login_refusals_and_cookie(world):
    base = world["vigie"].console
    r = requests.post(base + "api/login", json={"user": "ana", "password": "wrong"})
    assert r.status_code == 401 and "wrong user name or password" in r.json()["error"]
    r = requests.post(base + "api/login", json={"api_key": world["keys"]["north"]})
    assert r.status_code == 403 and "drones cannot use the console" in r.json()["error"]
    r = requests.post(base + "api/login", json={"user": "ana", "password": PASSWORDS["ana"]})
    cookie = r.headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and "Path=/" in cookie
    assert requests.get(base + "api/me").status_code == 401
    # A cross-site form cannot post: JSON only, and a foreign Origin is refused.
    s, _ = api(base, "ana", "/me")
    assert s.post(base + "api/sql", data="sql=select 1").status_code == 400
    r = s.post(base + "api/sql", json={"sql": "select 1"}, headers={"Origin": "http://evil.example"})
    assert r.status_code == 403
    assert "default-src 'self'" in requests.get(base).headers["content-security-policy"]


def test_map_shows_and_moves_drones(world, browser, pb):
    vigie = world["vigie"]
    page = Page(browser, vigie.console, user="ana")
    p = page.page
    until("12 drone markers", lambda: len(marker_ids(p)) == 12)
    drones = sorted(marker_ids(p))
    assert drones == [f"drone-{i:05d}" for i in range(12)]
    assert "plain background" in p.inner_text("#map-note")
    marker = "[data-drone='drone-00003']"
    before = p.get_attribute(marker, "d")
    write(vigie, world["keys"]["north"], pb, [report(pb, "drone-00003", 10_000, 48.70, 2.10)])
    until("the marker to move", lambda: p.get_attribute(marker, "d") != before)
    p.click(marker)
    p.wait_for_selector("#track-box:not([hidden])")
    assert p.inner_text("#track-drone") == "drone-00003"
    p.screenshot(path=str(SHOTS / "map.png"))
    page.close()


def test_alert_feed_live_ack_shared(world, browser, pb):
    vigie = world["vigie"]
    one = Page(browser, vigie.console, user="ana")
    two = Page(browser, vigie.console, user="boss")
    for page in (one, two):
        page.page.goto(vigie.console + "#alerts")
        page.page.wait_for_selector("#feed tr")
    sent = time.monotonic()
    write(vigie, world["keys"]["north"], pb, [report(
        pb, "drone-00001", 10_001, 48.8601, 2.3501, citizens=[("Zoé Test", 3.5)], words=["émeute"])])
    row = "#feed tr:has-text('Zoé Test')"
    one.page.wait_for_selector(row, timeout=10000)
    latency = time.monotonic() - sent
    print(f"alert drawn {latency * 1000:.0f} ms after the write")
    alert_id = int(one.page.get_attribute(row, "data-alert"))
    assert one.page.title().startswith("(")
    one.notes.append("unit 12 sent")
    one.page.click(f"{row} button.ack")
    # The acknowledgement reaches the other console without a reload.
    two.page.wait_for_selector(f"#feed tr[data-alert='{alert_id}'] td.state:has-text('unit 12 sent')",
                               timeout=10000)
    one.page.screenshot(path=str(SHOTS / "alerts.png"))
    _, r = api(vigie.console, "ana", "/sql", {
        "sql": f"SELECT alert_id, action, principal, note FROM alert_events WHERE alert_id = {alert_id}"})
    assert r.json()["rows"] == [[alert_id, "ack", "user:ana", "unit 12 sent"]]
    _, r = api(vigie.console, "boss", "/audit")
    actions = [(row[3], row[4]) for row in r.json()["rows"]]
    assert ("ack-alert", f"alert {alert_id}: unit 12 sent") in actions
    # Clicking the alert flies the map to it, with the words heard.
    two.page.click(f"#feed tr[data-alert='{alert_id}'] td:first-child")
    two.page.wait_for_selector(".alert-popup:has-text('émeute')", timeout=10000)
    one.close()
    two.close()


def test_sse_resumes_after_last_event_id(world, pb):
    base = world["vigie"].console
    s, r = api(base, "ana", "/alerts?limit=5000")
    ids = sorted(a["id"] for a in r.json()["alerts"])
    assert ids == list(range(1, len(ids) + 1)) and len(ids) >= 3

    def read_ids(headers, n):
        got = []
        with s.get(base + "api/alerts/stream", headers=headers, stream=True, timeout=30) as r:
            for line in r.iter_lines(decode_unicode=True):
                if line.startswith("id: "):
                    got.append(int(line[4:]))
                    if len(got) == n:
                        break
        return got

    head = read_ids({"Last-Event-ID": "0"}, 2)
    assert head == [1, 2]
    rest = read_ids({"Last-Event-ID": str(head[-1])}, len(ids) - 2)
    assert head + rest == ids  # no gap, no repeat


class Proxy:
    """A loopback TCP proxy in front of the console whose connections the test cuts, as a
    network would; it keeps what went through, to read the SSE ids and the reconnect's
    `Last-Event-ID` the browser sent."""

    def __init__(self, target):
        host, port = target.removeprefix("http://").rstrip("/").split(":")
        self.target = (host, int(port))
        self.server = socket.create_server(("127.0.0.1", 0))
        self.base = f"http://127.0.0.1:{self.server.getsockname()[1]}/"
        self.lock = threading.Lock()
        self.sockets, self.up, self.down = [], [], []
        self.refusing = False
        threading.Thread(target=self.accept, daemon=True).start()

    def accept(self):
        while True:
            try:
                client, _ = self.server.accept()
            except OSError:
                return
            if self.refusing:
                client.close()
                continue
            upstream = socket.create_connection(self.target)
            up, down = bytearray(), bytearray()
            with self.lock:
                self.sockets += [client, upstream]
                self.up.append(up)
                self.down.append(down)
            for src, dst, log in ((client, upstream, up), (upstream, client, down)):
                threading.Thread(target=self.pump, args=(src, dst, log), daemon=True).start()

    def pump(self, src, dst, log):
        try:
            while data := src.recv(65536):
                with self.lock:
                    log += data
                dst.sendall(data)
        except OSError:
            pass
        for s in (src, dst):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def cut(self):
        """Breaks every open connection, and refuses new ones until `heal`."""
        self.refusing = True
        with self.lock:
            for s in self.sockets:
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
            self.sockets = []

    def heal(self):
        self.refusing = False

    def sse_ids(self):
        with self.lock:
            return [int(i) for d in self.down for i in re.findall(rb"^id: (\d+)$", bytes(d), re.M)]

    def last_event_ids(self):
        with self.lock:
            return [int(i) for u in self.up
                    for i in re.findall(rb"(?i)^last-event-id: (\d+)\r$", bytes(u), re.M)]

    def close(self):
        self.server.close()
        self.cut()


def test_the_browser_resumes_its_alert_stream_after_a_network_cut(world, browser, pb):
    """The browser's own EventSource reconnects after the network breaks, sending the last id
    it saw: the alerts raised while it was cut off arrive once each, with no gap."""
    vigie, key = world["vigie"], world["keys"]["north"]
    proxy = Proxy(vigie.console)
    page = Page(browser, proxy.base, user="ana")
    try:
        page.page.goto(proxy.base + "#alerts")
        page.page.wait_for_selector("#feed tr")

        def low(seq, name):
            return report(pb, "drone-00002", seq, 48.86, 2.35, citizens=[(name, 2.0)])

        def shown(name):
            return page.page.locator(f"#feed tr:has-text('{name}')").count() == 1

        write(vigie, key, pb, [low(20_001, "Cut Before-1"), low(20_002, "Cut Before-2")])
        until("the alerts before the cut", lambda: shown("Cut Before-1") and shown("Cut Before-2"))
        before = proxy.sse_ids()
        assert len(before) == 2 and before[1] == before[0] + 1, before
        proxy.cut()
        write(vigie, key, pb, [low(20_003 + i, f"Cut During-{i}") for i in range(3)])
        time.sleep(1)
        proxy.heal()
        until("the alerts raised during the cut",
              lambda: all(shown(f"Cut During-{i}") for i in range(3)), timeout=30)
        ids = proxy.sse_ids()
        assert ids == list(range(before[0], before[0] + 5)), ids  # no gap, no repeat
        assert before[1] in proxy.last_event_ids(), "the browser resent the last id it saw"
    finally:
        page.close()
        proxy.close()


def test_sql_console_matches_duckdb(world, browser):
    page = Page(browser, world["vigie"].console, user="ana")
    p = page.page
    p.goto(world["vigie"].console + "#sql")
    p.wait_for_selector("#schema details")
    assert "alert_events" in p.inner_text("#schema")
    sql = ("SELECT drone_id, count(*) AS n FROM reports WHERE seq < 1000 "
           "GROUP BY drone_id ORDER BY drone_id")
    p.fill("#sql-text", sql)
    p.press("#sql-text", "Control+Enter")
    p.wait_for_selector("#sql-result tr:nth-child(2)")
    cells = p.eval_on_selector_all("#sql-result tr", "rows => rows.slice(1).map(r => [...r.cells].map(c => c.textContent))")
    expected = oracle_rows(world["dump"], "SELECT drone_id, count(*) FROM dump GROUP BY 1 ORDER BY 1")
    assert [(d, int(n)) for d, n in cells] == expected
    assert p.get_attribute("#sql-chart", "data-kind") == "bar"
    assert json.loads(p.get_attribute("#sql-chart", "data-values")) == [[n for _, n in expected]]
    assert p.query_selector("#sql-chart canvas") is not None
    assert "rows in" in p.inner_text("#sql-status")
    p.screenshot(path=str(SHOTS / "sql.png"))
    p.fill("#sql-text", "SELECT nope FROM reports")
    p.press("#sql-text", "Control+Enter")
    p.wait_for_selector("#sql-error:has-text('nope')")
    page.close()


def test_tenant_isolation_and_roles(world, browser):
    base = world["vigie"].console
    page = Page(browser, base, user="sam")
    p = page.page
    until("5 drone markers", lambda: len(marker_ids(p)) == 5)
    drones = marker_ids(p)
    assert all(d.startswith("drone-005") for d in drones), drones
    assert p.is_hidden("#audit-link")
    p.goto(base + "#alerts")
    assert "Zoé Test" not in p.inner_text("#feed")
    page.close()
    _, r = api(base, "sam", "/sql", {"sql": "SELECT count(DISTINCT drone_id) FROM reports"})
    assert r.json()["rows"] == [[5]]
    _, r = api(base, "ana", "/audit")
    assert r.status_code == 403
    admin_page = Page(browser, base, user="boss")
    admin_page.page.goto(base + "#audit")
    admin_page.page.wait_for_selector("#audit tr:has-text('console-login')")
    admin_page.page.goto(base + "#overview")
    admin_page.page.wait_for_selector("#fig-drones b")
    admin_page.page.screenshot(path=str(SHOTS / "overview.png"))
    admin_page.close()


def test_failing_tiles_fall_back_to_the_grid(tmp_path, browser):
    # Port 9 (discard) has no HTTP server here: every tile fails.
    vigie = Vigie(tmp_path / "data", "--console-addr", "127.0.0.1:0",
                  "--console-tile-url", "http://127.0.0.1:9/{z}/{x}/{y}.png")
    try:
        csp = requests.get(vigie.console).headers["content-security-policy"]
        assert "img-src 'self' data: http://127.0.0.1:9" in csp
        ctx = browser.new_context()
        p = ctx.new_page()
        p.goto(vigie.console)  # open mode: no login
        p.wait_for_selector("body[data-ready=true]", timeout=20000)
        p.wait_for_selector("#map-note:has-text('does not answer')", timeout=20000)
        ctx.close()
    finally:
        vigie.kill()


def test_an_outline_is_drawn_under_the_drones_without_tiles(tmp_path, browser):
    outline = tmp_path / "force.geojson"
    outline.write_text(json.dumps({"type": "Feature", "properties": {"name": "zone"}, "geometry": {
        "type": "Polygon",
        "coordinates": [[[2.25, 48.80], [2.45, 48.80], [2.45, 48.90], [2.25, 48.90], [2.25, 48.80]]]}}))
    bad = tmp_path / "bad.geojson"
    bad.write_text("{not json")
    refused = subprocess.run([vigie_bin(), "serve", "--data-dir", str(tmp_path / "bad"),
                              "--grpc-addr", "127.0.0.1:0", "--console-addr", "127.0.0.1:0",
                              "--console-outline", str(bad)],
                             capture_output=True, text=True, timeout=60)
    assert refused.returncode != 0 and "not GeoJSON" in refused.stderr, refused.stderr
    vigie = Vigie(tmp_path / "data", "--console-addr", "127.0.0.1:0",
                  "--console-outline", str(outline))
    try:
        ctx = browser.new_context()
        p = ctx.new_page()
        p.goto(vigie.console)  # open mode: no login
        p.wait_for_selector("body[data-ready=true]", timeout=20000)
        p.wait_for_selector("path.outline", state="attached", timeout=20000)
        assert "outline" in p.inner_text("#map-note")
        p.screenshot(path=str(SHOTS / "outline.png"))
        ctx.close()
    finally:
        vigie.kill()


def test_demo_prints_a_working_console_and_login(tmp_path):
    import signal
    import subprocess

    from conftest import vigie_bin

    proc = subprocess.Popen([vigie_bin(), "demo", "--data-dir", str(tmp_path / "demo"),
                             "--console-addr", "127.0.0.1:0", "--drones", "10",
                             "--interval", "200ms"], stdout=subprocess.PIPE, text=True)
    try:
        lines = {}
        for _ in range(6):
            words = proc.stdout.readline().split()
            if len(words) >= 2:
                lines[words[0]] = words
        base, password = lines["console"][1], lines["login"][4]
        s = requests.Session()
        assert s.post(base + "api/login", json={"user": "demo", "password": password}).ok
        until("10 live drones", lambda: len(s.get(base + "api/drones/latest").json()["drones"]) == 10)
        ages = [d["age_seconds"] for d in s.get(base + "api/drones/latest").json()["drones"]]
        assert max(ages) < 60  # reports carry the current time: a live fleet
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
        with pytest.raises(requests.ConnectionError):
            requests.get(base, timeout=5)  # the server stopped with the demo
    finally:
        proc.kill()


def test_saved_queries_are_the_tenants(world):
    base = world["vigie"].console
    ana, r = api(base, "ana", "/queries", {"name": "per drone", "sql": "SELECT drone_id FROM reports"})
    assert r.status_code == 200, r.text
    boss, r = api(base, "boss", "/queries")
    assert [(q["name"], q["saved_by"]) for q in r.json()["queries"]] == [("per drone", "user:ana")]
    _, r = api(base, "sam", "/queries")
    assert r.json()["queries"] == []  # south sees none of north's
    assert ana.post(base + "api/queries", json={"name": "", "sql": "x"}).status_code == 400
    assert boss.delete(base + "api/queries/per%20drone",
                       headers={"Content-Type": "application/json"}).json()["queries"] == []
    assert boss.delete(base + "api/queries/nothing",
                       headers={"Content-Type": "application/json"}).status_code == 404


def test_the_daily_report_downloads_for_the_callers_tenant(world, browser, tmp_path):
    base = world["vigie"].console
    day = time.strftime("%Y-%m-%d", time.gmtime())
    s, r = api(base, "ana", f"/report?day={day}")
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "application/pdf"
    assert r.headers["content-disposition"] == f'attachment; filename="vigie-north-{day}.pdf"'
    pdf = tmp_path / "north.pdf"
    pdf.write_bytes(r.content)
    text = subprocess.run(["pdftotext", "-layout", str(pdf), "-"], capture_output=True,
                          text=True, check=True).stdout
    assert f"Vigie daily report: north, {day}" in text
    # The same figures as the tenant's SQL (other tests of the module wrote reports too).
    r = s.post(base + "api/sql", json={"sql": f"SELECT count(*), count(DISTINCT drone_id) FROM "
                                              f"reports WHERE time >= '{day}T00:00:00Z'"})
    (reports, drones), = r.json()["rows"]
    assert re.search(rf"^\s*{reports}\s+\d+\s+{drones}\s*$", text, re.M), text[:600]
    r = s.get(base + f"api/report?day={day}&format=html")
    assert r.headers["content-type"].startswith("text/html") and "<svg" in r.text
    assert s.get(base + "api/report?day=yesterday").status_code == 400
    assert s.get(base + f"api/report?day={day}&format=docx").status_code == 400
    _, r = api(base, "sam", f"/report?day={day}")
    assert r.headers["content-disposition"] == f'attachment; filename="vigie-south-{day}.pdf"'
    # The overview links to it.
    page = Page(browser, base, user="ana")
    page.page.goto(base + "#overview")
    href = page.page.get_attribute("#report-pdf", "href")
    assert href.startswith("/api/report?day=")
    page.close()
