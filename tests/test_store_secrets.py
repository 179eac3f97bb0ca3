"""Secrets never reach a log line: a store URL is shown through ``log.redact``."""

import pytest

from party.log import redact


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("mongodb://admin:Sup3rS3cret@host/db", "mongodb://admin:***@host/db"),
        (
            "mongodb+srv://a:p%40ss@c.example.net/db?retryWrites=true&w=majority",
            "mongodb+srv://a:***@c.example.net/db?retryWrites=true&w=majority",
        ),
        ("mongodb://u:p@h1:1,h2:2/db", "mongodb://u:***@h1:1,h2:2/db"),
        (
            "mongodb://h/db?tlsCertificateKeyFilePassword=xyz&w=1",
            "mongodb://h/db?tlsCertificateKeyFilePassword=***&w=1",
        ),
        (
            "mongodb://h/db?authMechanismProperties=AWS_SESSION_TOKEN:abc",
            "mongodb://h/db?authMechanismProperties=***",
        ),
        ("mongodb://user@h/db", "mongodb://user@h/db"),
        (
            "sqlite:////var/lib/party.db?synchronous=normal",
            "sqlite:////var/lib/party.db?synchronous=normal",
        ),
    ],
)
def test_a_store_url_is_shown_without_its_secrets(url, shown):
    assert redact(url) == shown
