"""`make demo`: placeholder while the parts land."""
from __future__ import annotations

import argparse


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", default="../shared/data/scifact")


def run(args: argparse.Namespace) -> int:
    return 0
