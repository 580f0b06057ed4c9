"""The gateway's subcommands of `abgate`: serve; db (`db migrate`, `db backfill`, `events count`, `events tail`);
simulate (simulate, simulate-volume, demo, loop); report. Each module has `register(subparsers)`;
gateway/cli.py assembles them."""
