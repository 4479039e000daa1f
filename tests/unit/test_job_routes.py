"""The /jobs routes' query string, passed to the core encoded again (the SDK gives its arguments decoded)."""

from transfers_plugin.jobs.routes import _query
from transfers_plugin.routes import Request


def test_the_query_given_to_the_core_is_encoded_again():
    assert _query(Request("GET", "/jobs")) == ""
    assert _query(Request("GET", "/jobs", args={"expand": ""})) == "?expand"
    assert _query(Request("GET", "/jobs", args={"expand": "", "limit": "2"})) == "?expand&limit=2"
    # decoded by the SDK from ?a=b%26c%3Dd&e%20f=%2F: not a second argument, not another path
    assert _query(Request("GET", "/jobs", args={"a": "b&c=d", "e f": "/"})) == "?a=b%26c%3Dd&e%20f=%2F"
