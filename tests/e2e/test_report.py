"""The daily report: `vigie report` on a lake written by the real server, read back with poppler
(`pdftotext`, `pdftoppm`, `pdfinfo`), its figures checked against DuckDB over the simulator's dump.

Tenant `north` in Europe/Paris: the local day 2026-02-01 runs from 2026-01-31T23:00Z to
2026-02-01T23:00Z. The fleet reports from 2026-01-29 on, so the seven days before are partly
empty and partly full.
"""

import os
import time
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from conftest import ROOT, Vigie, oracle_rows, simulate, until, vigie_bin
from test_tenants import admin, new_key

SHOTS = Path(os.environ.get("VIGIE_TEST_OUTPUT", ROOT / "target" / "test-output")) / "report"
START, END = "2026-01-31T23:00:00Z", "2026-02-01T23:00:00Z"
DAY_SQL = f"time >= TIMESTAMPTZ '{START}' AND time < TIMESTAMPTZ '{END}'"
SIGHTINGS = "(SELECT drone_id, time, unnest(citizens, recursive := true) FROM dump)"


@pytest.fixture(scope="module")
def lake(tmp_path_factory, request):
    data = tmp_path_factory.mktemp("report") / "data"
    admin(data, "create-tenant", "north")
    admin(data, "set-report", "--tenant", "north", "--tz", "Europe/Paris")
    _, key = new_key(data, "north", "drone")
    vigie = Vigie(data, "--flush-interval", "500ms")
    request.addfinalizer(vigie.kill)
    dump = data.parent / "north.jsonl"
    # 3 days and 12 hours of 30 drones, one report a minute each.
    simulate(vigie.addr, "--drones", "30", "--reports-per-drone", str(84 * 60), "--start",
             "2026-01-29T12:00:00Z", "--dump", str(dump), "--api-key", key, "--seed", "11")
    assert vigie.stop() == 0
    return {"data": data, "dump": dump}


def report(data, *args, check=True):
    run = subprocess.run([vigie_bin(), "report", "--data-dir", str(data), *args],
                         capture_output=True, text=True, timeout=120)
    if check:
        assert run.returncode == 0, run.stderr
    return run


def text_of(pdf: Path) -> str:
    return subprocess.run(["pdftotext", "-layout", str(pdf), "-"], capture_output=True,
                          text=True, check=True).stdout


def figures(text: str, day: str = "2026-02-01") -> dict:
    """The report's figures, read back from its text."""
    numbers = [line.split() for line in text.splitlines()
               if re.fullmatch(r"\s*\d+(\s+\d+){2}\s*", line)]
    (reports, alerts, drones), (sightings, low, citizens) = [list(map(int, n)) for n in numbers[:2]]
    week = {m[0]: (int(m[1]), int(m[2])) for m in
            re.findall(r"^\s*(\d{4}-\d\d-\d\d)\s+(\d+)\s+(\d+)\s*$", text, re.M)}
    this_day = re.search(re.escape(day) + r" \(this report\)\s+(\d+)\s+(\d+)", text)
    return {
        "summary": (reports, alerts, drones, sightings, low, citizens),
        "this_day": (int(this_day[1]), int(this_day[2])),
        "week": week,
        "rules": dict((r, int(n)) for r, n in re.findall(r"^\s*(low_score)\s+(\d+)\s*$", text, re.M)),
        "drones": [(d, int(n)) for d, n in re.findall(r"^\s*(drone-\d+)\s+(\d+)\s*$", text, re.M)],
        "received": int(re.search(r"reports stored \(by report time\)\s+(\d+)", text)[1]),
        "ingest": {k: int(re.search(rf"{re.escape(label)}\s+(\d+)", text)[1]) for k, label in [
            ("accepted", "reports accepted (by time of receipt)"),
            ("duplicates", "duplicates (retries, not stored again)"),
            ("rejected", "rejected (invalid)"),
            ("refused", "refused (server overloaded)"),
            ("flush_failures", "failed flushes (retried)")]},
    }


def test_the_pdf_says_what_duckdb_says_and_is_the_same_twice(lake, tmp_path):
    data, dump = lake["data"], lake["dump"]
    out = tmp_path / "north.pdf"
    run = report(data, "--tenant", "north", "--day", "2026-02-01", "--out", str(out))
    assert "report of tenant north for 2026-02-01 (Europe/Paris)" in run.stdout
    got = figures(text_of(out))

    (reports, drones), = oracle_rows(dump, f"SELECT count(*), count(DISTINCT drone_id) FROM dump "
                                           f"WHERE {DAY_SQL}")
    (sightings, low, citizens), = oracle_rows(
        dump, f"SELECT count(*), count(*) FILTER (score < 20), "
              f"count(DISTINCT name) FILTER (score < 20) FROM {SIGHTINGS} WHERE {DAY_SQL}")
    assert got["summary"] == (reports, low, drones, sightings, low, citizens)
    assert got["this_day"] == (reports, low)
    assert got["rules"] == {"low_score": low}
    assert got["received"] == reports
    top = oracle_rows(dump, f"SELECT drone_id, count(*) AS n FROM {SIGHTINGS} "
                            f"WHERE {DAY_SQL} AND score < 20 GROUP BY 1 ORDER BY n DESC, 1 LIMIT 10")
    assert got["drones"] == top
    # The seven days before, each a local (Paris) day.
    week = dict(oracle_rows(dump, "SELECT strftime(time AT TIME ZONE 'Europe/Paris', '%Y-%m-%d'), "
                                  "count(*) FROM dump GROUP BY 1"))
    alerts_week = dict(oracle_rows(dump, f"SELECT strftime(time AT TIME ZONE 'Europe/Paris', "
                                         f"'%Y-%m-%d'), count(*) FROM {SIGHTINGS} "
                                         f"WHERE score < 20 GROUP BY 1"))
    want = {f"2026-01-{d}": (week.get(f"2026-01-{d}", 0), alerts_week.get(f"2026-01-{d}", 0))
            for d in range(25, 32)}
    assert got["week"] == want
    assert got["week"]["2026-01-28"] == (0, 0) and got["week"]["2026-01-30"][0] == 30 * 1440

    # Same data, same bytes.
    again = tmp_path / "again.pdf"
    report(data, "--tenant", "north", "--day", "2026-02-01", "--out", str(again))
    assert out.read_bytes() == again.read_bytes()

    # Pages that render: three A4 pages, each to a PNG.
    info = subprocess.run(["pdfinfo", str(out)], capture_output=True, text=True, check=True).stdout
    assert re.search(r"^Pages:\s+3$", info, re.M), info
    assert "A4" in info
    subprocess.run(["pdftoppm", "-r", "50", "-png", str(out), str(tmp_path / "page")], check=True)
    pages = sorted(tmp_path.glob("page-*.png"))
    assert len(pages) == 3 and all(p.stat().st_size > 10_000 for p in pages)
    SHOTS.mkdir(parents=True, exist_ok=True)
    subprocess.run(["pdftoppm", "-r", "80", "-png", "-f", "1", "-l", "2", str(out),
                    str(SHOTS / "north")], check=True)
    shutil.copy(out, SHOTS / "north.pdf")


def test_names_are_in_the_report_only_when_the_tenant_says_so(lake, tmp_path):
    data, dump = lake["data"], lake["dump"]
    names = {n for n, in oracle_rows(dump, f"SELECT DISTINCT name FROM {SIGHTINGS}")}
    out = tmp_path / "off.pdf"
    report(data, "--tenant", "north", "--day", "2026-02-01", "--out", str(out))
    text = text_of(out)
    assert "name withheld" in text
    assert [n for n in names if n in text] == []
    html = tmp_path / "off.html"
    report(data, "--tenant", "north", "--day", "2026-02-01", "--out", str(html), "--format", "html")
    assert [n for n in names if n in html.read_text()] == []

    admin(data, "set-report", "--tenant", "north", "--names", "on")
    try:
        report(data, "--tenant", "north", "--day", "2026-02-01", "--out", str(out))
        text = text_of(out)
        top = oracle_rows(dump, f"SELECT name, count(*) AS n FROM {SIGHTINGS} "
                                f"WHERE {DAY_SQL} AND score < 20 GROUP BY 1 ORDER BY n DESC, 1 "
                                f"LIMIT 10")
        rows = re.findall(r"^\s*(\S.*?\S)\s+(\d+)\s*$", text.split("Citizens with most alerts")[1],
                          re.M)
        assert [(n, int(c)) for n, c in rows[:len(top)]] == top
    finally:
        admin(data, "set-report", "--tenant", "north", "--names", "off")


def test_html_has_the_same_figures(lake, tmp_path):
    data, dump = lake["data"], lake["dump"]
    out = tmp_path / "north.html"
    report(data, "--tenant", "north", "--day", "2026-02-01", "--out", str(out), "--format", "html")
    page = out.read_text()
    (reports,), = oracle_rows(dump, f"SELECT count(*) FROM dump WHERE {DAY_SQL}")
    assert page.startswith("<!doctype html>") and "<script" not in page
    assert f"<div><b>{reports}</b>reports</div>" in page
    assert page.count("<svg") == 4


def test_bad_requests_are_refused_with_reasons(lake, tmp_path):
    data = lake["data"]
    out = str(tmp_path / "x.pdf")
    for args, reason in [
        (["--tenant", "north", "--day", "01/02/2026"], "is not a date"),
        (["--tenant", "nobody", "--day", "2026-02-01"], "there is no tenant nobody"),
        (["--tenant", "north", "--day", "2026-02-01", "--tz", "Mars/Olympus"], "unknown time zone"),
        (["--tenant", "north", "--day", "2026-02-01", "--format", "docx"], "unknown report format"),
    ]:
        run = report(data, *args, "--out", out, check=False)
        assert run.returncode != 0 and reason in run.stderr, (args, run.stderr)
        assert not Path(out).exists()
    for args, reason in [
        (["--tz", "Nowhere/Land"], "unknown time zone"),
        (["--at", "25:00"], "is not a time of day"),
        (["--to", "not-an-address"], "is not a mail address"),
    ]:
        run = subprocess.run([vigie_bin(), "admin", "--data-dir", str(data), "set-report",
                              "--tenant", "north", *args], capture_output=True, text=True)
        assert run.returncode != 0 and reason in run.stderr, (args, run.stderr)


def test_a_report_is_audited(lake, tmp_path):
    from deltalake import DeltaTable
    data = lake["data"]
    report(data, "--tenant", "north", "--day", "2026-01-31", "--out", str(tmp_path / "r.pdf"))
    audit = DeltaTable(str(data / "lake" / "tenants" / "north" / "tables" / "audit_log"))
    rows = audit.to_pyarrow_table().to_pylist()
    details = [r["detail"] for r in rows if r["action"] == "report"]
    assert "day 2026-01-31 (Europe/Paris), pdf, names off" in details


class Sink:
    """A real SMTP server (aiosmtpd) on loopback that keeps every mail it accepts, and refuses
    the first `refuse` with a transient 451."""

    def __init__(self, refuse=0):
        from aiosmtpd.controller import Controller
        from test_s3 import free_port
        self.mails, self.refused, self.refuse = [], 0, refuse
        sink = self

        class Handler:
            async def handle_DATA(self, server, session, envelope):
                if sink.refuse > 0:
                    sink.refuse -= 1
                    sink.refused += 1
                    return "451 4.3.0 try again later"
                sink.mails.append(envelope)
                return "250 OK"

        self.controller = Controller(Handler(), hostname="127.0.0.1", port=free_port())
        self.controller.start()
        self.url = f"smtp://127.0.0.1:{self.controller.port}?tls=none"

    def stop(self):
        self.controller.stop()


def local_yesterday(tz):
    from datetime import datetime, timedelta
    from zoneinfo import ZoneInfo
    today = datetime.now(ZoneInfo(tz)).date()
    day = today - timedelta(days=1)
    start = datetime.combine(day, datetime.min.time(), ZoneInfo(tz))
    end = datetime.combine(today, datetime.min.time(), ZoneInfo(tz))
    return day, start, end


def pdf_of(mail, tmp_path, name):
    import email
    from email import policy
    message = email.message_from_bytes(mail, policy=policy.default)
    pdfs = [p for p in message.iter_attachments() if p.get_content_type() == "application/pdf"]
    assert len(pdfs) == 1, message
    path = tmp_path / name
    path.write_bytes(pdfs[0].get_content())
    return message, path


@pytest.fixture(scope="module")
def mailed(tmp_path_factory, request):
    """Two tenants mailed every morning at 00:00 their time: yesterday's report is due now."""
    data = tmp_path_factory.mktemp("mailed") / "data"
    keys = {}
    for tenant, tz, to in [("north", "Europe/Paris", "chief@north.test,ops@north.test"),
                           ("south", "America/New_York", "chief@south.test")]:
        admin(data, "create-tenant", tenant)
        admin(data, "set-report", "--tenant", tenant, "--tz", tz, "--to", to, "--at", "00:00")
        keys[tenant] = new_key(data, tenant, "drone")[1]
    vigie = Vigie(data, "--flush-interval", "500ms")
    request.addfinalizer(vigie.kill)
    dump = data.parent / "north.jsonl"
    start = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() - 40 * 3600))
    simulate(vigie.addr, "--drones", "10", "--reports-per-drone", str(36 * 60), "--start", start,
             "--dump", str(dump), "--api-key", keys["north"])
    simulate(vigie.addr, "--drones", "3", "--first-drone", "500", "--reports-per-drone", "600",
             "--start", start, "--api-key", keys["south"])
    assert vigie.stop() == 0
    return {"data": data, "dump": dump}


def test_each_tenant_gets_one_mail_a_day_through_refusals_and_restarts(mailed, tmp_path,
                                                                       start_vigie):
    from deltalake import DeltaTable
    data, dump = mailed["data"], mailed["dump"]
    sink = Sink(refuse=2)
    try:
        vigie = start_vigie("--smtp-url", sink.url, "--smtp-from", "Vigie <vigie@police.test>",
                            data_dir=data)
        # Refused twice (451), then accepted: retried with backoff, not dropped.
        until("both tenants' mails", lambda: len(sink.mails) == 2, timeout=90)
        assert sink.refused == 2
        by_to = {tuple(sorted(m.rcpt_tos)): m for m in sink.mails}
        assert set(by_to) == {("chief@north.test", "ops@north.test"), ("chief@south.test",)}
        day, start, end = local_yesterday("Europe/Paris")
        message, pdf = pdf_of(by_to[("chief@north.test", "ops@north.test")].content, tmp_path,
                              "north.pdf")
        assert message["Subject"] == f"Vigie daily report: north, {day}"
        assert message["Message-ID"] == f"<vigie-report-north-{day}@vigie>"
        (reports,), = oracle_rows(dump, "SELECT count(*) FROM dump WHERE time >= $1 AND time < $2",
                                  [start, end])
        assert reports > 0
        assert figures(text_of(pdf), str(day))["summary"][0] == reports
        body = message.get_body(preferencelist=("plain",)).get_content()
        assert f"Reports: {reports} from 10 drones" in body
        time.sleep(3)
        assert len(sink.mails) == 2  # sent, so not again
        assert vigie.stop() == 0
        # A restart finds the sends recorded: nothing is sent again.
        vigie = start_vigie("--smtp-url", sink.url, data_dir=data)
        time.sleep(5)
        assert len(sink.mails) == 2
        assert vigie.stop() == 0
    finally:
        sink.stop()
    audit = DeltaTable(str(data / "lake" / "tenants" / "north" / "tables" / "audit_log"))
    mails = [(r["outcome"], r["detail"]) for r in audit.to_pyarrow_table().to_pylist()
             if r["action"] == "report-mail"]
    ok = [m for m in mails if m[0] == "ok"]
    assert ok == [("ok", f"day {day} (Europe/Paris) to chief@north.test,ops@north.test")], mails
    assert len([m for m in mails if m[0].startswith("error: ")]) >= 1, mails


def test_a_dry_run_writes_the_mail_to_a_file(mailed, tmp_path, start_vigie):
    data = tmp_path / "data"
    shutil.copytree(mailed["data"], data)
    # The copy has recorded its sends: forget them so that the dry run has one to make.
    shutil.rmtree(data / "lake" / "_vigie" / "checkpoints", ignore_errors=True)
    out = tmp_path / "outbox"
    vigie = start_vigie("--smtp-dry-run", str(out), data_dir=data)
    until("the dry-run mails", lambda: len(list(out.glob("*.eml"))) == 2, timeout=90)
    assert vigie.stop() == 0
    day, _, _ = local_yesterday("Europe/Paris")
    message, pdf = pdf_of((out / f"vigie-report-north-{day}.eml").read_bytes(), tmp_path, "d.pdf")
    assert message["To"] == "chief@north.test, ops@north.test"
    assert text_of(pdf).startswith("Vigie daily report: north")


def test_a_clear_text_relay_must_be_loopback(tmp_path):
    run = subprocess.run([vigie_bin(), "serve", "--data-dir", str(tmp_path / "d"), "--grpc-addr",
                          "127.0.0.1:0", "--smtp-url", "smtp://mail.example.com:25?tls=none"],
                         capture_output=True, text=True, timeout=60)
    assert run.returncode != 0 and "loopback relay" in run.stderr, run.stderr


def test_ingest_health_counts_duplicates_and_rejections(tmp_path, start_vigie, pb):
    """What no data table keeps — retries and invalid reports — is in `ingest_stats` (committed
    at the latest at the graceful stop) and in the report's ingest health."""
    import grpc
    vigie_pb2, vigie_grpc = pb
    vigie = start_vigie("--flush-interval", "500ms")
    now = int(time.time())

    def reports(seqs, latitude=48.85):
        out = []
        for seq in seqs:
            r = vigie_pb2.DroneReport(drone_id="drone-7", seq=seq, latitude=latitude,
                                      longitude=2.35)
            r.time.FromSeconds(now - 60 + seq)
            out.append(r)
        return out

    stub = vigie_grpc.IngestStub(grpc.insecure_channel(vigie.addr))
    first = stub.Write(vigie_pb2.WriteRequest(reports=reports(range(20))), timeout=30)
    retry = stub.Write(vigie_pb2.WriteRequest(reports=reports(range(15, 25))), timeout=30)
    bad = stub.Write(vigie_pb2.WriteRequest(reports=reports(range(30, 33), latitude=120.0)),
                     timeout=30)
    assert (first.accepted, retry.accepted, retry.duplicates, len(bad.rejected)) == (20, 5, 5, 3)
    assert vigie.stop() == 0
    day = time.strftime("%Y-%m-%d", time.gmtime(now))
    out = tmp_path / "today.pdf"
    report(tmp_path / "data", "--day", day, "--out", str(out))
    got = figures(text_of(out), day)
    assert got["ingest"] == {"accepted": 25, "duplicates": 5, "rejected": 3, "refused": 0,
                             "flush_failures": 0}
    assert got["received"] == 25
