"""The webhook sink: every alert POSTed as JSON once the receiver answers 2xx, in id order, and
retried while it fails; the alerts are those DuckDB computes from the same fleet."""

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from conftest import simulate
from test_alerts import FLEET, expected_alerts


def test_webhook_receives_every_alert_in_order_despite_failures(start_vigie, tmp_path):
    received, lock = [], threading.Lock()
    failures_left = [5]

    class Hook(BaseHTTPRequestHandler):
        def do_POST(self):
            body = self.rfile.read(int(self.headers["Content-Length"]))
            with lock:
                if failures_left[0] > 0:
                    failures_left[0] -= 1
                    self.send_response(503)
                else:
                    received.append(json.loads(body))
                    self.send_response(204)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Hook)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        dump = tmp_path / "fleet.jsonl"
        simulate(None, *FLEET, "--dump", str(dump))
        want = expected_alerts(dump)
        vigie = start_vigie("--alert-webhook", f"http://127.0.0.1:{server.server_port}/hook")
        simulate(vigie.addr, *FLEET)
        deadline = time.time() + 60
        while len(received) < len(want) and time.time() < deadline:
            time.sleep(0.1)
        assert failures_left[0] == 0
        ids = [a["id"] for a in received]
        assert ids == list(range(1, len(want) + 1))
        got = sorted((a["drone_id"], a["seq"], a["citizen"], a["score"], a["latitude"],
                      a["longitude"]) for a in received)
        assert got == want
        assert received[0]["rule"] == "low_score"
        assert received[0]["time"].endswith("Z") and received[0]["raised_at"].endswith("Z")
    finally:
        server.shutdown()
