"""The example notebook (examples/alerts_per_hour.ipynb) runs headless against a fresh server, so it
never rots: its chart is written and its totals match what SQL says."""

import adbc_driver_flightsql.dbapi as flightsql
import nbformat
from nbclient import NotebookClient

from conftest import ROOT, simulate


def test_example_notebook_runs(start_vigie, tmp_path, monkeypatch):
    vigie = start_vigie()
    simulate(vigie.addr, "--drones", "20", "--reports-per-drone", "300", "--seed", "3",
             "--start", "2026-04-01T06:00:00Z")
    with flightsql.connect(vigie.uri) as conn, conn.cursor() as cur:
        cur.execute("SELECT count(*), count(DISTINCT date_trunc('hour', time)) FROM alerts")
        (alerts, hours), = cur.fetchall()
    assert alerts > 0

    chart = tmp_path / "chart.png"
    monkeypatch.setenv("VIGIE_URI", vigie.uri)
    monkeypatch.setenv("ALERTS_CHART", str(chart))
    notebook = nbformat.read(ROOT / "examples" / "alerts_per_hour.ipynb", as_version=4)
    NotebookClient(notebook, timeout=120, kernel_name="python3",
                   resources={"metadata": {"path": str(tmp_path)}}).execute()

    printed = "".join(
        out.get("text", "") for cell in notebook.cells if cell.cell_type == "code"
        for out in cell.get("outputs", []) if out.get("output_type") == "stream")
    assert f"total alerts: {alerts} over {hours} hours" in printed, printed
    assert chart.stat().st_size > 1000
    images = [out for cell in notebook.cells for out in cell.get("outputs", [])
              if "image/png" in out.get("data", {})]
    assert images, "the chart is not displayed"
