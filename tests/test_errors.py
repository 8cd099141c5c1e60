"""describe_error: how every error is rendered in log lines."""

from __future__ import annotations

import redis.exceptions

from streamq.errors import ConfigurationError, describe_error


def test_describe_error_keeps_the_type_and_the_message() -> None:
    """An error reads `Type: message`, including redis-py's errors, whose repr() leaves the message out."""
    refused = redis.exceptions.ConnectionError("Error 111 connecting to 127.0.0.1:6379. Connection refused.")
    assert (
        describe_error(refused)
        == "ConnectionError: Error 111 connecting to 127.0.0.1:6379. Connection refused."
    )
    assert describe_error(ConfigurationError("bad name")) == "ConfigurationError: bad name"
    assert describe_error(KeyError("d")) == "KeyError: 'd'"


def test_describe_error_without_a_message_is_the_type_alone() -> None:
    """An error raised without a message reads as its type, with no dangling colon."""
    assert describe_error(TimeoutError()) == "TimeoutError"
    assert describe_error(redis.exceptions.TimeoutError()) == "TimeoutError"
