"""The event log: impressions and feedback from the request path to ClickHouse, each stored exactly once.

    events.py   the event types and their spool/row encoding
    spool.py    the on-disk, checksummed spool every event is written to before the 2xx
    writer.py   the queue and background thread that insert batches and replay the spool
    store.py    DSNs and clients (embedded chdb or a server), one lock per embedded folder
    tables.py   the ClickHouse tables and views, and `migrate` (single node or cluster)
"""
