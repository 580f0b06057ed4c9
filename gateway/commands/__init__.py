"""The gateway's subcommands of `abgate`: serve, db (migrate, events), simulate (simulate, simulate-volume,
demo) and report. Each module has `register(subparsers)`; gateway/cli.py assembles them."""
