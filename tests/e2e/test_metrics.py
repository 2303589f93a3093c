"""Prometheus metrics at --metrics-addr: real counts after ingest, queries and refusals."""

import re
import time
import urllib.request

import adbc_driver_flightsql.dbapi as flightsql

from conftest import simulate


def scrape(url) -> dict[str, float]:
    text = urllib.request.urlopen(url, timeout=10).read().decode()
    values = {}
    for line in text.splitlines():
        m = re.match(r"^([a-z_]+(?:\{[^}]*\})?) ([0-9.e+-]+)$", line)
        if m:
            values[m.group(1)] = float(m.group(2))
    return values


def test_metrics_count_reports_alerts_and_queries(start_vigie):
    vigie = start_vigie("--metrics-addr", "127.0.0.1:0", "--flush-interval", "300ms")
    url = f"http://{vigie.metrics}/metrics"

    out = simulate(vigie.addr, "--drones", "5", "--reports-per-drone", "40")
    assert "accepted=200" in out
    simulate(vigie.addr, "--drones", "5", "--reports-per-drone", "40")  # all duplicates
    with flightsql.connect(vigie.uri) as conn, conn.cursor() as cur:
        cur.execute("SELECT count(*) FROM alerts")
        (alerts,), = cur.fetchall()
        cur.execute("SELECT count(*) FROM reports")
        assert cur.fetchall() == [(200,)]

    m = scrape(url)
    assert m['vigie_reports_total{tenant="default",outcome="accepted"}'] == 200
    assert m['vigie_reports_total{tenant="default",outcome="duplicate"}'] == 200
    assert m.get('vigie_alerts_total{tenant="default"}', 0) == alerts
    assert m['vigie_queries_total{tenant="default",outcome="ok"}'] >= 2
    assert m['vigie_query_seconds_count{tenant="default"}'] >= 2
    deadline = time.time() + 10
    while "vigie_flush_seconds_count" not in m and time.time() < deadline:
        time.sleep(0.2)
        m = scrape(url)
    assert m["vigie_flush_seconds_count"] >= 1
    assert 'vigie_flushed_rows_total{tenant="default",table="reports"}' in m
    try:
        urllib.request.urlopen(url.replace("/metrics", "/other"), timeout=10)
        raise AssertionError("expected 404")
    except urllib.error.HTTPError as e:
        assert e.code == 404
