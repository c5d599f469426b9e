"""`minisgl control COMMAND ARGS`: how the words after the command become its arguments
(key=value, --key value, --key=value, and a command's positional argument)."""

from __future__ import annotations

import click
import pytest

from minisgl.cli.control import parse_args


@pytest.mark.parametrize("words", [("--tier", "host"), ("--tier=host",), ("tier=host",), ("host",)])
def test_flush_cache_takes_its_tier_every_way(words):
    assert parse_args("flush_cache", words) == {"tier": "host"}


def test_options_are_named_like_python_and_valued_as_json():
    assert parse_args("set_scheduler", ("--name", "cache_aware")) == {"name": "cache_aware"}
    assert parse_args("custom", ("--max-items=3", "flag=true")) == {"max_items": 3, "flag": True}


def test_an_option_without_its_value_and_stray_words_are_usage_errors():
    with pytest.raises(click.UsageError, match="--tier needs a value"):
        parse_args("flush_cache", ("--tier",))
    with pytest.raises(click.UsageError, match="takes one tier"):
        parse_args("flush_cache", ("host", "disk"))
    with pytest.raises(click.UsageError, match="key=value arguments only"):
        parse_args("metrics", ("everything",))
