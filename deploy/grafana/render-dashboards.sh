#!/bin/sh
# Grafana entrypoint wrapper (deploy/compose.yaml): copy dashboards/grafana/*.json (mounted at
# /abgate-dashboards) into the provisioned folder with the import inputs ${DS_CLICKHOUSE} and ${DS_PROMETHEUS}
# replaced by the provisioned data sources' uids. Grafana resolves those inputs only in the UI's import, not in
# file provisioning (grafana/grafana#10786), and then the panels would find no data source.
set -eu
out=/var/lib/grafana/dashboards/abgate
mkdir -p "$out"
for f in /abgate-dashboards/*.json; do
    [ -e "$f" ] || continue
    sed -e 's/${DS_CLICKHOUSE}/clickhouse/g' -e 's/${DS_PROMETHEUS}/prometheus/g' "$f" > "$out/$(basename "$f")"
done
exec /run.sh "$@"
