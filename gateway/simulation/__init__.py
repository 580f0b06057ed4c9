"""Simulated users and the demo: what drives a gateway the way people would, without people.

    users.py         the click model (position bias x relevance from the judgments) and the user population
    replay.py        users replayed through a gateway's HTTP API (loopback only)
    volume.py        the volume study: users each design needs for a given power, under the click model
    steps.py         the demo's steps as cached subprocesses of the CLI
    demo_traffic.py  the demo's traffic: serve, replay in stages, read the reports
    demo.py          `make demo`: the whole loop on SciFact
"""
