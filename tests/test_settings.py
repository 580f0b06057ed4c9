"""Gateway settings: the flags an error message names are the flags `abgate serve` has."""

from __future__ import annotations

import argparse

import pytest

from experiments.errors import InputError
from gateway.commands import serve
from gateway.settings import SERVE_FLAGS, Settings


def _serve_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser()
    serve.register(parser.add_subparsers())
    return parser._subparsers._group_actions[0].choices["serve"]


def test_every_named_flag_is_a_serve_option_for_that_setting():
    options = {o: action.dest for action in _serve_parser()._actions for o in action.option_strings}
    assert {name: options.get(flag) for name, flag in SERVE_FLAGS.items()} == {name: name for name in SERVE_FLAGS}


@pytest.mark.parametrize("env, field, says", [
    ({"ABGATE_MAX_BATCH": "0"}, "max_batch", "(env ABGATE_MAX_BATCH or --max-batch)"),
    ({"ABGATE_DRAIN_S": "900"}, "drain_s", "(env ABGATE_DRAIN_S)"),            # environment-only: no flag named
    ({"ABGATE_REPORT_TTL_S": "-1"}, "report_ttl_s", "(env ABGATE_REPORT_TTL_S)"),
])
def test_a_bad_setting_names_its_variable_and_its_flag_only_when_there_is_one(env, field, says):
    with pytest.raises(InputError) as info:
        Settings.from_env(env)
    assert info.value.field == field and info.value.message.endswith(says)


def test_report_ttl_zero_means_rebuild_at_every_request():
    assert Settings.from_env({"ABGATE_REPORT_TTL_S": "0"}).report_ttl_s == 0
