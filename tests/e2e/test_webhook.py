"""The webhook sink: every alert POSTed as JSON once the receiver answers 2xx, in id order, and
retried while it fails; the alerts are those DuckDB computes from the same fleet."""

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from conftest import simulate
from test_alerts import FLEET, expected_alerts
from test_slice import vigie_rows


class Receiver:
    """A webhook receiver on loopback: `ids` in the order POSTed; answers 503 while `refuse`,
    and to the next `fail_next` POSTs."""

    def __init__(self):
        self.received, self.lock, self.refuse, self.fail_next = [], threading.Lock(), False, 0
        receiver = self

        class Hook(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                with receiver.lock:
                    if receiver.refuse or receiver.fail_next > 0:
                        receiver.fail_next = max(0, receiver.fail_next - 1)
                        self.send_response(503)
                    else:
                        receiver.received.append(json.loads(body))
                        self.send_response(204)
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Hook)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_port}/hook"

    def ids(self):
        with self.lock:
            return [a["id"] for a in self.received]

    def wait_for(self, ids, timeout=60):
        """Waits until every id of `ids` was received."""
        deadline = time.time() + timeout
        while not set(ids) <= set(self.ids()):
            assert time.time() < deadline, f"missing {sorted(set(ids) - set(self.ids()))[:10]}"
            time.sleep(0.1)

    def close(self):
        self.server.shutdown()


def test_webhook_receives_every_alert_in_order_despite_failures(start_vigie, tmp_path):
    receiver = Receiver()
    receiver.fail_next = 5
    try:
        dump = tmp_path / "fleet.jsonl"
        simulate(None, *FLEET, "--dump", str(dump))
        want = expected_alerts(dump)
        vigie = start_vigie("--alert-webhook", receiver.url)
        simulate(vigie.addr, *FLEET)
        receiver.wait_for(range(1, len(want) + 1))
        assert receiver.fail_next == 0
        received = receiver.received
        ids = [a["id"] for a in received]
        assert ids == list(range(1, len(want) + 1))
        got = sorted((a["drone_id"], a["seq"], a["citizen"], a["score"], a["latitude"],
                      a["longitude"]) for a in received)
        assert got == want
        assert received[0]["rule"] == "low_score"
        assert received[0]["time"].endswith("Z") and received[0]["raised_at"].endswith("Z")
    finally:
        receiver.close()


def test_webhook_delivers_after_a_crash_what_it_could_not_before(start_vigie, tmp_path):
    """The webhook's progress is a checkpoint in the lake: alerts it could not deliver before
    a kill -9 are delivered by the next start, once each, in order."""
    receiver = Receiver()
    try:
        receiver.refuse = True
        args = ("--alert-webhook", receiver.url)
        vigie = start_vigie(*args, data_dir=tmp_path / "data")
        simulate(vigie.addr, *FLEET)
        vigie.kill()
        assert receiver.ids() == []
        receiver.refuse = False
        vigie = start_vigie(*args, data_dir=tmp_path / "data")
        (count,), = vigie_rows(vigie.uri, "SELECT count(*) FROM alerts")
        assert count > 3
        receiver.wait_for(range(1, count + 1))
        assert receiver.ids() == list(range(1, count + 1))
        # A graceful stop records the progress: the next start posts nothing again.
        assert vigie.stop() == 0
        vigie = start_vigie(*args, data_dir=tmp_path / "data")
        time.sleep(1.5)
        assert receiver.ids() == list(range(1, count + 1))
    finally:
        receiver.close()
