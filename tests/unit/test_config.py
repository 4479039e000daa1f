"""Configuration: the ``Transfers`` section, global options and ``OrthancPeers`` (protocol.md section 10)."""

import pytest

from transfers_plugin.config import (
    TRANSFERS_OPTIONS,
    ConfigError,
    PeerConfig,
    TransfersConfig,
    commit_threads_advice,
    merge_registered_peers,
    normalize_url,
    parse_configuration,
    parse_peer,
    releases_gil,
)

# protocol.md section 10, written out here rather than read from the module.
CXX_DEFAULTS = {
    "Threads": 4,
    "BucketSize": 4096,
    "CacheSize": 512,
    "MaxPushTransactions": 4,
    "MaxHttpRetries": 0,
    "PeerConnectivityTimeout": 2,
    "PeerCommitTimeout": 600,
    "CommitThreadsCount": 1,
}
ATTRIBUTES = {
    "Threads": "threads",
    "BucketSize": "bucket_size_kb",
    "CacheSize": "cache_size_mb",
    "MaxPushTransactions": "max_push_transactions",
    "MaxHttpRetries": "max_http_retries",
    "PeerConnectivityTimeout": "peer_connectivity_timeout",
    "PeerCommitTimeout": "peer_commit_timeout",
    "CommitThreadsCount": "commit_threads_count",
}
WRONG_TYPES = ["4", "", 4.0, 2.5, True, False, None, [4], {"v": 4}]


def problems_of(cfg) -> list:
    with pytest.raises(ConfigError) as info:
        parse_configuration(cfg)
    assert info.value.problems, "a ConfigError must list its problems"
    assert str(info.value) == "; ".join(info.value.problems)
    return info.value.problems


def one_peer(item, name="p") -> PeerConfig:
    return parse_configuration({"OrthancPeers": {name: item}}).peers[name]


def peer_problems(item, name="p") -> list:
    return problems_of({"OrthancPeers": {name: item}})


# --- defaults ------------------------------------------------------------------------------------------

def test_option_table_has_exactly_the_cxx_options_and_defaults():
    assert {k: v[0] for k, v in TRANSFERS_OPTIONS.items()} == CXX_DEFAULTS
    for name, (default, lo, hi, meaning) in TRANSFERS_OPTIONS.items():
        assert lo <= default <= hi, name
        assert meaning


@pytest.mark.parametrize("cfg", [{}, {"Transfers": {}}, {"Transfers": None}, {"OrthancPeers": {}},
                                 {"OrthancPeers": None}])
def test_defaults_of_an_empty_configuration(cfg):
    config = parse_configuration(cfg)
    for option, attr in ATTRIBUTES.items():
        assert getattr(config, attr) == CXX_DEFAULTS[option], option
    assert config.http_timeout == 60
    assert config.https_verify_peers is True
    assert config.https_ca_certificates is None
    assert config.http_proxy is None
    assert dict(config.peers) == {}
    assert config.warnings == ()
    assert config.cache_size_bytes == 512 * 1024 * 1024


def test_dataclass_defaults_equal_the_parsed_defaults():
    default = TransfersConfig()
    for option, attr in ATTRIBUTES.items():
        assert getattr(default, attr) == CXX_DEFAULTS[option], option
    assert default.http_timeout == 60
    parsed = parse_configuration({})
    for attr in list(ATTRIBUTES.values()) + ["http_timeout", "https_verify_peers", "https_ca_certificates",
                                             "http_proxy", "concurrent_jobs", "peers", "warnings"]:
        assert getattr(parsed, attr) == getattr(default, attr), attr


def test_values_are_taken():
    section = {"Threads": 8, "BucketSize": 1, "CacheSize": 3, "MaxPushTransactions": 0, "MaxHttpRetries": 5,
               "PeerConnectivityTimeout": 9, "PeerCommitTimeout": 30, "CommitThreadsCount": 2}
    config = parse_configuration({"Transfers": section, "HttpTimeout": 0, "HttpsVerifyPeers": False,
                                  "HttpsCACertificates": "/ca.pem", "HttpProxy": "http://proxy:3128"})
    for option, attr in ATTRIBUTES.items():
        assert getattr(config, attr) == section[option], option
    assert config.http_timeout == 0
    assert config.https_verify_peers is False
    assert config.https_ca_certificates == "/ca.pem"
    assert config.http_proxy == "http://proxy:3128"
    assert config.cache_size_bytes == 3 * 1024 * 1024


# --- wrong values --------------------------------------------------------------------------------------

@pytest.mark.parametrize("option", sorted(CXX_DEFAULTS))
@pytest.mark.parametrize("value", WRONG_TYPES, ids=repr)
def test_wrong_type_is_reported_naming_the_option(option, value):
    problems = problems_of({"Transfers": {option: value}})
    assert len(problems) == 1
    assert f"Transfers.{option}" in problems[0]


@pytest.mark.parametrize("option", sorted(CXX_DEFAULTS))
@pytest.mark.parametrize("value", [-1, -4096, 2**63, 10**30])
def test_out_of_range_is_reported_naming_the_option(option, value):
    problems = problems_of({"Transfers": {option: value}})
    assert len(problems) == 1
    assert f"Transfers.{option}" in problems[0]


@pytest.mark.parametrize("option", ["Threads", "BucketSize", "CacheSize", "CommitThreadsCount",
                                    "PeerConnectivityTimeout", "PeerCommitTimeout"])
def test_zero_is_refused_where_it_cannot_work(option):
    # Threads 0 deadlocks the chunk server; BucketSize, CacheSize and CommitThreadsCount 0 fail in C++ 1.7;
    # a zero timeout would make every probe or commit fail at once.
    problems = problems_of({"Transfers": {option: 0}})
    assert len(problems) == 1 and f"Transfers.{option}" in problems[0]


@pytest.mark.parametrize("option", ["MaxPushTransactions", "MaxHttpRetries"])
def test_zero_is_accepted_where_it_means_something(option):
    config = parse_configuration({"Transfers": {option: 0}})
    assert getattr(config, ATTRIBUTES[option]) == 0


@pytest.mark.parametrize("option", sorted(CXX_DEFAULTS))
def test_range_bounds_are_inclusive(option):
    _default, lo, hi, _ = TRANSFERS_OPTIONS[option]
    assert getattr(parse_configuration({"Transfers": {option: lo}}), ATTRIBUTES[option]) == lo
    assert getattr(parse_configuration({"Transfers": {option: hi}}), ATTRIBUTES[option]) == hi
    assert len(problems_of({"Transfers": {option: hi + 1}})) == 1
    assert len(problems_of({"Transfers": {option: lo - 1}})) == 1


def test_all_problems_are_reported_at_once():
    cfg = {
        "Transfers": {"Threads": "4", "BucketSize": 0, "CacheSize": 1.5, "MaxPushTransactions": -1,
                      "MaxHttpRetries": None, "PeerConnectivityTimeout": True, "PeerCommitTimeout": [],
                      "CommitThreadsCount": 0},
        "HttpTimeout": "60",
        "HttpsVerifyPeers": "yes",
        "HttpProxy": 3128,
        "OrthancPeers": {"a": [], "b": {"Url": 5}},
    }
    problems = problems_of(cfg)
    text = "\n".join(problems)
    for option in CXX_DEFAULTS:
        assert f"Transfers.{option}" in text, option
    for name in ("HttpTimeout", "HttpsVerifyPeers", "HttpProxy", "OrthancPeers.a", "OrthancPeers.b"):
        assert name in text, name
    assert len(problems) == len(CXX_DEFAULTS) + 5


@pytest.mark.parametrize("value", ["60", 60.0, True, None, -1])
def test_http_timeout_wrong_values(value):
    problems = problems_of({"HttpTimeout": value})
    assert len(problems) == 1 and "HttpTimeout" in problems[0]


@pytest.mark.parametrize("key,value", [("HttpsVerifyPeers", 1), ("HttpsVerifyPeers", "true"),
                                       ("HttpsCACertificates", 1), ("HttpProxy", ["x"])])
def test_global_options_wrong_types(key, value):
    problems = problems_of({key: value})
    assert len(problems) == 1 and key in problems[0]


@pytest.mark.parametrize("section", [[], "x", 4, True])
def test_section_must_be_an_object(section):
    problems = problems_of({"Transfers": section})
    assert len(problems) == 1 and "Transfers" in problems[0]


def test_unknown_options_give_warnings_not_errors():
    config = parse_configuration({"Transfers": {"Threads": 2, "Thread": 3, "threads": 5, "MaxHttpRetry": 1}})
    assert config.threads == 2
    assert len(config.warnings) == 3
    for name in ("Thread", "threads", "MaxHttpRetry"):
        assert any(f"Transfers.{name}" in w for w in config.warnings), name
    assert not any("Transfers.Threads " in w for w in config.warnings)


def test_unknown_options_do_not_hide_errors():
    problems = problems_of({"Transfers": {"Foo": 1, "Threads": -2}})
    assert len(problems) == 1 and "Transfers.Threads" in problems[0]


# --- OrthancPeers, list form ---------------------------------------------------------------------------

def test_peer_list_form_url_only():
    peer = one_peer(["http://host:8042"])
    assert peer == PeerConfig("p", "http://host:8042/")
    assert peer.username is None and peer.password is None
    assert peer.user_properties == () and peer.remote_self is None
    assert peer.headers == {}


def test_peer_list_form_with_credentials():
    peer = one_peer(["http://host:8042/", "alice", "s3cret"])
    assert (peer.url, peer.username, peer.password) == ("http://host:8042/", "alice", "s3cret")


@pytest.mark.parametrize("item", [[], ["http://a/", "user"], ["http://a/", "u", "p", "x"], [1], ["http://a/", 1, "p"],
                                  ["http://a/", "u", None]])
def test_peer_list_form_bad(item):
    problems = peer_problems(item)
    assert len(problems) == 1 and "OrthancPeers.p" in problems[0]


@pytest.mark.parametrize("item", ["http://a/", 5, None, True])
def test_peer_must_be_array_or_object(item):
    problems = peer_problems(item)
    assert len(problems) == 1 and "OrthancPeers.p" in problems[0]


@pytest.mark.parametrize("value", [[], "x", 3])
def test_orthanc_peers_must_be_an_object(value):
    problems = problems_of({"OrthancPeers": value})
    assert len(problems) == 1 and "OrthancPeers" in problems[0]


# --- OrthancPeers, object form -------------------------------------------------------------------------

@pytest.mark.parametrize("key", ["Url", "URL"])
def test_peer_object_url_keys(key):
    assert one_peer({key: "http://h:1"}).url == "http://h:1/"


@pytest.mark.parametrize("url,expected", [("http://h:1", "http://h:1/"), ("http://h:1/", "http://h:1/"),
                                          ("https://h/orthanc", "https://h/orthanc/"),
                                          ("https://h/orthanc/", "https://h/orthanc/")])
def test_urls_are_normalised_to_end_with_a_slash(url, expected):
    assert normalize_url(url) == expected
    assert one_peer({"Url": url}).url == expected
    assert one_peer([url]).url == expected


@pytest.mark.parametrize("item", [{}, {"Url": ""}, {"Url": None}, {"Url": 5}, {"URL": ["http://h/"]},
                                  {"Username": "u", "Password": "p"}])
def test_peer_object_needs_a_url(item):
    problems = peer_problems(item)
    assert any("OrthancPeers.p.Url" in p for p in problems)


def test_peer_object_full():
    peer = one_peer({
        "Url": "https://h:8043",
        "Username": "alice",
        "Password": "pw",
        "HttpHeaders": {"X-B": "2", "X-A": "1"},
        "Timeout": 30,
        "CertificateFile": "/c.pem",
        "CertificateKeyFile": "/k.pem",
        "CertificateKeyPassword": "kp",
        "Pkcs11": True,
        "RemoteSelf": "me",
    }, name="remote")
    assert peer.name == "remote"
    assert peer.url == "https://h:8043/"
    assert (peer.username, peer.password) == ("alice", "pw")
    assert peer.headers == {"X-A": "1", "X-B": "2"}
    assert peer.timeout == 30
    assert (peer.certificate_file, peer.certificate_key_file, peer.certificate_key_password) == (
        "/c.pem", "/k.pem", "kp")
    assert peer.pkcs11 is True
    # only RemoteSelf is a user property: the known keys are not
    assert peer.user_properties == (("RemoteSelf", "me"),)
    assert peer.remote_self == "me"


def test_peer_object_minimal_defaults():
    peer = one_peer({"Url": "http://h/"})
    assert peer == PeerConfig("p", "http://h/")
    assert peer.timeout is None and peer.pkcs11 is False and peer.certificate_file is None


@pytest.mark.parametrize("item", [{"Url": "http://h/", "Username": "u"}, {"Url": "http://h/", "Password": "p"}])
def test_username_and_password_go_together(item):
    problems = peer_problems(item)
    assert len(problems) == 1 and "OrthancPeers.p" in problems[0]


@pytest.mark.parametrize("key", ["Username", "Password", "CertificateFile", "CertificateKeyFile",
                                 "CertificateKeyPassword"])
def test_string_keys_must_be_strings(key):
    item = {"Url": "http://h/", "Username": "u", "Password": "p"}
    item[key] = 12
    problems = peer_problems(item)
    assert any(f"OrthancPeers.p.{key}" in p for p in problems)


@pytest.mark.parametrize("headers", [[], "X: 1", {"X": 1}, {"X": None}, {"X": ["a"]}, None])
def test_http_headers_must_be_an_object_of_strings(headers):
    problems = peer_problems({"Url": "http://h/", "HttpHeaders": headers})
    assert len(problems) == 1 and "OrthancPeers.p.HttpHeaders" in problems[0]


@pytest.mark.parametrize("timeout", [-1, "5", 5.0, True, None])
def test_peer_timeout_must_be_a_non_negative_integer(timeout):
    problems = peer_problems({"Url": "http://h/", "Timeout": timeout})
    assert len(problems) == 1 and "OrthancPeers.p.Timeout" in problems[0]


def test_peer_timeout_zero_means_unset():
    assert one_peer({"Url": "http://h/", "Timeout": 0}).timeout is None


@pytest.mark.parametrize("pkcs11", [1, "true", None])
def test_pkcs11_must_be_boolean(pkcs11):
    problems = peer_problems({"Url": "http://h/", "Pkcs11": pkcs11})
    assert len(problems) == 1 and "OrthancPeers.p.Pkcs11" in problems[0]


def test_user_properties_are_strings():
    peer = one_peer({"Url": "http://h/", "RemoteSelf": "main", "Yes": True, "No": False, "Count": 42,
                     "Negative": -3, "Empty": ""})
    props = dict(peer.user_properties)
    assert props == {"RemoteSelf": "main", "Yes": "1", "No": "0", "Count": "42", "Negative": "-3", "Empty": ""}
    assert all(isinstance(v, str) for v in props.values())


@pytest.mark.parametrize("value", [1.5, None, [], {}, ["a"]])
def test_other_user_property_types_are_refused(value):
    problems = peer_problems({"Url": "http://h/", "Extra": value})
    assert len(problems) == 1 and "OrthancPeers.p.Extra" in problems[0]


def test_remote_self_any_value_counts():
    assert one_peer({"Url": "http://h/", "RemoteSelf": ""}).remote_self == ""
    assert one_peer({"Url": "http://h/", "RemoteSelf": True}).remote_self == "1"
    assert one_peer({"Url": "http://h/"}).remote_self is None
    assert one_peer(["http://h/", "u", "p"]).remote_self is None


def test_every_problem_of_one_peer_and_of_several_peers():
    problems = problems_of({"OrthancPeers": {
        "good": ["http://ok/"],
        "bad1": {"Url": "", "Username": 3, "Timeout": -1, "Pkcs11": "no", "Extra": 1.5},
        "bad2": ["http://x/", "only-user"],
    }})
    text = "\n".join(problems)
    for part in ("OrthancPeers.bad1.Url", "OrthancPeers.bad1.Username", "OrthancPeers.bad1.Timeout",
                 "OrthancPeers.bad1.Pkcs11", "OrthancPeers.bad1.Extra", "OrthancPeers.bad2"):
        assert part in text, part
    assert "good" not in text


def test_parse_peer_returns_none_and_collects_problems():
    problems: list = []
    assert parse_peer("x", {"Url": 1}, problems) is None
    assert len(problems) == 1
    assert parse_peer("y", ["http://y"], problems) == PeerConfig("y", "http://y/")
    assert len(problems) == 1


def test_several_peers_keep_their_names():
    config = parse_configuration({"OrthancPeers": {"b": ["http://b"], "a": {"URL": "http://a"}}})
    assert set(config.peers) == {"a", "b"}
    assert config.peers["a"].name == "a" and config.peers["b"].url == "http://b/"


# --- timeouts ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("http_timeout,peer_timeout,expected", [
    (60, None, 60.0),
    (60, 5, 5.0),     # the peer's Timeout wins
    (10, 120, 120.0),  # even when larger
    (0, None, None),  # HttpTimeout 0: no timeout
    (0, 7, 7.0),
    (60, 0, 60.0),    # a peer Timeout of 0 is no Timeout
])
def test_peer_timeout_precedence(http_timeout, peer_timeout, expected):
    config = TransfersConfig(http_timeout=http_timeout)
    result = config.peer_timeout(PeerConfig("p", "http://h/", timeout=peer_timeout))
    assert result == expected
    assert result is None or isinstance(result, float)


def test_peer_timeout_from_a_parsed_configuration():
    config = parse_configuration({"HttpTimeout": 30, "OrthancPeers": {
        "fast": {"Url": "http://f/", "Timeout": 3},
        "plain": ["http://p/"],
        "zero": {"Url": "http://z/", "Timeout": 0},
    }})
    assert config.peer_timeout(config.peers["fast"]) == 3.0
    assert config.peer_timeout(config.peers["plain"]) == 30.0
    assert config.peer_timeout(config.peers["zero"]) == 30.0
    assert parse_configuration({"HttpTimeout": 0}).peer_timeout(config.peers["plain"]) is None


# --- registered peers ----------------------------------------------------------------------------------

def test_merge_registered_peers():
    config = parse_configuration({"OrthancPeers": {
        "conf": {"Url": "http://conf:8042", "Username": "u", "Password": "p", "HttpHeaders": {"X": "1"}}}})
    registered = [
        ("conf", "http://conf:8042/", {}),                      # also known to Orthanc: the configuration wins
        ("db", "http://db:8042", {"RemoteSelf": "me"}),         # only in the database
        ("db2", "http://db2:8042/", {}),
    ]
    merged = merge_registered_peers(config, registered)
    assert set(merged) == {"conf", "db", "db2"}
    assert merged["conf"] is config.peers["conf"]
    assert merged["conf"].username == "u" and merged["conf"].headers == {"X": "1"}
    assert merged["db"] == PeerConfig("db", "http://db:8042/", user_properties=(("RemoteSelf", "me"),))
    assert merged["db"].remote_self == "me"
    assert merged["db"].username is None
    assert merged["db2"].url == "http://db2:8042/" and merged["db2"].remote_self is None
    # the configuration itself is left alone
    assert set(config.peers) == {"conf"}


def test_merge_with_nothing_registered():
    config = parse_configuration({"OrthancPeers": {"a": ["http://a"]}})
    assert merge_registered_peers(config, []) == dict(config.peers)
    assert merge_registered_peers(TransfersConfig(), []) == {}


# -- CommitThreadsCount and the GIL (Python.AllowThreads) ---------------------------------------------------


def test_python_allow_threads_is_read_from_the_python_section():
    assert parse_configuration({}).python_allow_threads is False
    assert parse_configuration({"Python": {"AllowThreads": True}}).python_allow_threads is True
    for other in ({"Python": {"AllowThreads": "true"}}, {"Python": True}, {"Python": {"AllowThreads": False}},
                  {"AllowThreads": True}):
        assert parse_configuration(other).python_allow_threads is False


@pytest.mark.parametrize("allow,version,released", [
    (True, "4.3", True), (True, "5.0", True), (True, "mainline", True), (True, "10.1", True),
    (True, "4.2", False), (True, "4.0", False), (True, "", False), (True, "unknown", False),
    (False, "5.0", False), (False, "mainline", False),
])
def test_releases_gil(allow, version, released):
    assert releases_gil(allow, version) is released


def test_commit_threads_advice():
    assert commit_threads_advice(1, False, "4.0") is None  # the default where imports cannot overlap
    assert commit_threads_advice(4, True, "5.0") is None  # parallel imports, as advised
    level, message = commit_threads_advice(1, True, "5.0")
    assert level == "info" and "CommitThreadsCount 4" in message and "AllowThreads" in message
    level, message = commit_threads_advice(4, False, "4.0")
    assert level == "warning" and "is 4" in message and "no AllowThreads option" in message
    level, message = commit_threads_advice(2, False, "5.0")  # the option exists, and is off
    assert level == "warning" and "Python.AllowThreads is false" in message
    level, message = commit_threads_advice(2, False, "")
    assert level == "warning" and "version could not be read" in message
