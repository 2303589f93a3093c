"""Flight SQL metadata through the ADBC driver (what DBeaver and Grafana browse): catalogs, schemas,
tables with their Arrow schemas, table types, with and without filters."""

import adbc_driver_flightsql.dbapi as flightsql


def test_get_objects_and_table_schema(start_vigie):
    vigie = start_vigie()
    with flightsql.connect(vigie.uri) as conn:
        objects = conn.adbc_get_objects(depth="tables").read_all().to_pylist()
        tree = {
            c["catalog_name"]: {
                s["db_schema_name"]: sorted((t["table_name"], t["table_type"]) for t in s["db_schema_tables"])
                for s in c["catalog_db_schemas"]
            }
            for c in objects
        }
        assert tree["vigie"]["public"] == [
            ("alert_rules", "VIEW"), ("alerts", "TABLE"), ("reports", "TABLE"), ("sightings", "VIEW"),
        ]
        # Filters with patterns, and no catalog given.
        only = conn.adbc_get_objects(depth="tables", table_name_filter="rep%").read_all().to_pylist()
        names = [t["table_name"] for c in only for s in c["catalog_db_schemas"]
                 for t in s["db_schema_tables"]]
        assert names == ["reports"]
        schema = conn.adbc_get_table_schema("reports", catalog_filter="vigie", db_schema_filter="public")
        assert schema.names == ["drone_id", "seq", "time", "latitude", "longitude", "citizens",
                                "words", "received_at", "day"]
        assert str(schema.field("time").type) == "timestamp[us, tz=UTC]"
        assert conn.adbc_get_table_types() == ["TABLE", "VIEW"]
        info = conn.adbc_get_info()
        assert info["vendor_name"] == "Vigie"
