import argparse

import pytest

from party.config import Settings, add_arguments, load
from party.errors import ConfigError


def test_flags_beat_environment_beat_defaults():
    env = {"PARTY_WORKERS": "3", "PARTY_PORT": "9000", "PARTY_TASKS": "a.py, b"}
    settings = load({"port": "9100"}, env)
    assert settings.port == 9100 and settings.workers == 3 and settings.tasks == ("a.py", "b")
    assert settings.store == Settings().store == "sqlite:///party.db"


def test_parser_flags_default_to_unset_so_environment_applies():
    parser = argparse.ArgumentParser()
    add_arguments(parser, ["store", "poll_interval", "insecure"])
    args = parser.parse_args(["--poll-interval", "0.25"])
    settings = load(args, {"PARTY_STORE": "sqlite:///x.db"})
    assert settings.poll_interval == 0.25 and settings.store == "sqlite:///x.db"
    assert settings.insecure is False


@pytest.mark.parametrize(
    "env, message",
    [
        ({"PARTY_PORT": "eighty"}, "PARTY_PORT='eighty' is not valid .* expected a port number"),
        ({"PARTY_WORKERS": "0"}, "PARTY_WORKERS='0' is not valid .*at least 1"),
        ({"PARTY_POLL_INTERVAL": "-1"}, "PARTY_POLL_INTERVAL='-1'.*positive"),
        ({"PARTY_LOG_LEVEL": "LOUD"}, "PARTY_LOG_LEVEL='LOUD'.*DEBUG, INFO"),
    ],
)
def test_bad_settings_name_the_variable_and_what_is_accepted(env, message):
    with pytest.raises(ConfigError, match=message):
        load({}, env)
