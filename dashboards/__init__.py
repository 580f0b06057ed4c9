"""abgate dashboards: report pages served by the gateway and Grafana JSON."""
