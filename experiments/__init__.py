"""abgate experiments: YAML schema, metrics, the statistics engine and reports."""
