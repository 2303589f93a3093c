"""TLS on the gRPC port (`--tls-cert`, `--tls-key`) with real clients (ADBC, pyarrow, tonic's via
`vigie query`), and `vigie query` itself."""

import subprocess

import adbc_driver_flightsql.dbapi as adbc
import pyarrow.flight as flight
import pytest
from flightsql import flightsql_pb2
from google.protobuf import any_pb2

from conftest import simulate, vigie_query


@pytest.fixture
def certificate(tmp_path):
    """A self-signed certificate for 127.0.0.1 and localhost (openssl from the OS)."""
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
         "-nodes", "-keyout", str(key), "-out", str(cert), "-days", "2", "-subj", "/CN=localhost",
         "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost",
         # A server certificate, not a CA: rustls (tonic) refuses a CA used as end entity.
         "-addext", "basicConstraints=critical,CA:FALSE"],
        check=True, capture_output=True)
    return cert, key


def count_reports(client, options=None):
    command = any_pb2.Any()
    command.Pack(flightsql_pb2.CommandStatementQuery(query="SELECT count(*) AS n FROM reports"))
    descriptor = flight.FlightDescriptor.for_command(command.SerializeToString())
    info = client.get_flight_info(descriptor, options)
    return client.do_get(info.endpoints[0].ticket, options).read_all().to_pylist()


def test_tls_with_adbc_pyarrow_and_vigie_query(start_vigie, certificate):
    cert, key = certificate
    vigie = start_vigie("--tls-cert", str(cert), "--tls-key", str(key))
    assert vigie.uri.startswith("grpc+tls://127.0.0.1:")
    pem = cert.read_text()

    with adbc.connect(vigie.uri, db_kwargs={
            "adbc.flight.sql.client_option.tls_root_certs": pem}) as conn, conn.cursor() as cur:
        cur.execute("SELECT 40 + 2 AS answer")
        assert cur.fetchall() == [(42,)]

    assert count_reports(flight.FlightClient(vigie.uri, tls_root_certs=pem)) == [{"n": 0}]
    # Without trusting the certificate, the client refuses the server.
    with pytest.raises(flight.FlightUnavailableError):
        count_reports(flight.FlightClient(vigie.uri))
    # A plaintext client cannot talk to a TLS port.
    with pytest.raises(flight.FlightUnavailableError):
        count_reports(flight.FlightClient(f"grpc://{vigie.addr}"))

    out = vigie_query("--endpoint", vigie.uri, "--tls-ca", str(cert),
                      "SELECT 'tls' AS via, 7 * 6 AS answer").stdout
    assert out.split() == "+-----+--------+ | via | answer | +-----+--------+ | tls | 42 | " \
                          "+-----+--------+".split(), out


def test_vigie_query_prints_tables_and_reports_errors(start_vigie):
    vigie = start_vigie()
    simulate(vigie.addr, "--drones", "2", "--reports-per-drone", "3",
             "--start", "2026-01-01T00:00:00Z")
    out = vigie_query("--endpoint", vigie.uri, "--user", "al", "--password", "p",
                      "SELECT drone_id, count(*) AS n FROM reports GROUP BY drone_id "
                      "ORDER BY drone_id").stdout
    assert out.splitlines() == [
        "+-------------+---+",
        "| drone_id    | n |",
        "+-------------+---+",
        "| drone-00000 | 3 |",
        "| drone-00001 | 3 |",
        "+-------------+---+",
    ], out
    failed = vigie_query("--endpoint", vigie.uri, "SELECT nope FROM reports", check=False)
    assert failed.returncode != 0
    assert "No field named nope" in failed.stderr, failed.stderr
    # Without SQL, a prompt: statements end with `;` and may span lines (stdin here).
    from conftest import vigie_bin
    session = subprocess.run([vigie_bin(), "query", "--endpoint", vigie.uri],
                             input="SELECT count(*)\n  AS n FROM reports;\nSELECT nope;\n\\q\n",
                             capture_output=True, text=True, timeout=60)
    assert session.returncode == 0, session.stderr
    assert "| 6 |" in session.stdout, session.stdout
    assert "6 row(s)" not in session.stderr and "1 row(s)" in session.stderr, session.stderr
    assert "error:" in session.stderr and "nope" in session.stderr, session.stderr
