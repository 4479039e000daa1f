"""tools.docker_config: the orthancteam/orthanc image's rules from environment variables to the configuration."""

import math
import textwrap

import pytest

from tools import docker_config as dc
from transfers_plugin.config import INT_OPTIONS, STRING_OPTIONS


def build(*pairs):
    return dc.configuration_from_environment(list(pairs))


def without_defaults(result):
    """The configuration less the keys that the image's defaults added (none of them set by the variables)."""
    added = set(dc.ORTHANC_DEFAULTS) | {"Gdcm", "OrthancExplorer2"}
    return {k: v for k, v in result.configuration.items() if k not in added}


# -- names --------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name, path", [
    ("ORTHANC__STABLE_AGE", ("StableAge",)),                                     # the book's examples
    ("ORTHANC__DICOM_WEB__ROOT", ("DicomWeb", "Root")),
    ("ORTHANC__DICOM_WEB__STUDIES_METADATA", ("DicomWeb", "StudiesMetadata")),
    ("ORTHANC__QUERY_RETRIEVE_SIZE", ("QueryRetrieveSize",)),
    ("ORTHANC__PYTHON_SCRIPT", ("PythonScript",)),
    ("ORTHANC__ORTHANC_PEERS", ("OrthancPeers",)),
    ("ORTHANC__TRANSFERS__MAX_HTTP_RETRIES", ("Transfers", "MaxHttpRetries")),
    ("ORTHANC__A__B__C", ("A", "B", "C")),
    ("ORTHANC__ORTHANC_EXPLORER2__X", ("OrthancExplorer2", "X")),               # a digit is a character like any
    ("ORTHANC__lower_case", ("lowercase",)),                                     # the first character is kept as is
])
def test_standard_names(name, path):
    assert dc.json_path(name) == path


@pytest.mark.parametrize("name, path", [
    ("ORTHANC__CASE_SENSITIVE_PN", ("CaseSensitivePN",)),                        # the rule alone: CaseSensitivePn
    ("ORTHANC__HTTPS_CA_CERTIFICATES", ("HttpsCACertificates",)),
    ("ORTHANC__STORE_MD5_FOR_ATTACHMENTS", ("StoreMD5ForAttachments",)),
    ("ORTHANC__POSTGRESQL", ("PostgreSQL",)),
    ("ORTHANC__POSTGRESQL__HOST", ("PostgreSQL", "Host")),
    ("ORTHANC__MYSQL__PORT", ("MySQL", "Port")),
    ("ORTHANC__MYSQL__SSL_CA_CERTIFICATES", ("MySQL", "SslCACertificates")),
    ("ORTHANC__OHIF__DATA_SOURCE", ("OHIF", "DataSource")),
    ("ORTHANC__ORTHANC_EXPLORER_2__IS_DEFAULT_ORTHANC_UI", ("OrthancExplorer2", "IsDefaultOrthancUI")),
    ("OE2_ENABLED", ("OrthancExplorer2", "IsDefaultOrthancUI")),
])
def test_names_the_rule_gets_wrong_have_aliases(name, path):
    assert dc.json_path(name) == path


def test_first_level_names_apply_to_the_first_level_only():
    assert dc.json_path("ORTHANC__X__POSTGRESQL") == ("X", "Postgresql")
    assert dc.json_path("ORTHANC__POSTGRESQL_INDEX") == ("PostgresqlIndex",)


@pytest.mark.parametrize("name", ["ORTHANC__", "ORTHANC__A__", "ORTHANC__A____B", "ORTHANC__A___B", "ORTHANC__A_"])
def test_an_empty_word_stops_the_container(name):
    with pytest.raises(dc.DockerConfigError, match="would not start"):
        dc.json_path(name)


def test_every_option_of_the_plugin_can_be_set_by_a_variable():
    """The book's recipe (an '_' before each capital, upper case) gives a variable that the image turns back
    into the same option: no option of the Transfers section needs an alias."""
    for option in list(INT_OPTIONS) + list(STRING_OPTIONS):
        words = "".join("_" + c if c.isupper() else c for c in option).lstrip("_").upper()
        assert dc.json_path(f"ORTHANC__TRANSFERS__{words}") == ("Transfers", option)


# -- values -------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("text, value", [
    ("5", 5), (" 42\n", 42), ("1.5", 1.5), ("true", True), ("false", False), ("null", None),
    ('{"a": [1, {"b": "c"}]}', {"a": [1, {"b": "c"}]}), ("[1, 2]", [1, 2]), ('"quoted"', "quoted"),
    ("/var/lib/orthanc", "/var/lib/orthanc"), ("orthanc-a", "orthanc-a"), ("", ""),
    ("007", "007"), ("True", "True"), ("False", "False"), ("yes", "yes"),
])
def test_values_are_json_when_they_parse(text, value):
    assert dc.json_value(text) == value
    assert type(dc.json_value(text)) is type(value)


def test_nan_is_what_python_s_json_reads():
    assert math.isnan(dc.json_value("NaN"))


def test_a_value_that_looks_like_json_but_does_not_parse_is_refused():
    with pytest.raises(dc.DockerConfigError, match="ORTHANC__REGISTERED_USERS looks like JSON"):
        build(("ORTHANC__REGISTERED_USERS", '{"transfers": "pass"word"}'))


# -- merging ------------------------------------------------------------------------------------------------

def test_levels_nest_and_objects_merge():
    result = build(("ORTHANC__TRANSFERS__THREADS", "8"), ("ORTHANC__TRANSFERS__BUCKET_SIZE", "1024"),
                   ("ORTHANC__TRANSFERS", '{"CacheSize": 256}'), ("ORTHANC__NAME", "site-a"))
    assert without_defaults(result) == {"Transfers": {"Threads": 8, "BucketSize": 1024, "CacheSize": 256},
                                        "Name": "site-a"}


def test_orthanc_json_merges_with_variables_and_may_hold_comments():
    result = build(("ORTHANC_JSON", textwrap.dedent("""\
        {
          // a comment
          "Transfers": {"Threads": 2 /* another */},
          "Url": "http://x//y /* not a comment */"
        }""")), ("ORTHANC__TRANSFERS__BUCKET_SIZE", "64"))
    assert without_defaults(result) == {"Transfers": {"Threads": 2, "BucketSize": 64},
                                        "Url": "http://x//y /* not a comment */"}


def test_orthanc_json_must_be_an_object():
    with pytest.raises(dc.DockerConfigError, match="not valid JSON"):
        build(("ORTHANC_JSON", "{"))
    with pytest.raises(dc.DockerConfigError, match="a JSON object"):
        build(("ORTHANC_JSON", "[1]"))


def test_two_variables_that_set_one_value_differently_are_refused():
    with pytest.raises(dc.DockerConfigError, match="ORTHANC__TRANSFERS__THREADS.*Transfers.Threads"):
        build(("ORTHANC_JSON", '{"Transfers": {"Threads": 2}}'), ("ORTHANC__TRANSFERS__THREADS", "4"))
    with pytest.raises(dc.DockerConfigError, match="depends on the order"):
        build(("ORTHANC__TRANSFERS__THREADS", "4"), ("ORTHANC__TRANSFERS", "0"))
    # the same value twice is no conflict
    assert build(("ORTHANC_JSON", '{"Name": "a"}'), ("ORTHANC__NAME", "a")).configuration["Name"] == "a"


def test_an_object_over_a_value_stops_the_container():
    with pytest.raises(dc.DockerConfigError, match="would not start"):
        build(("ORTHANC__TRANSFERS", "0"), ("ORTHANC__TRANSFERS__THREADS", "4"))


def test_merge_replaces_or_keeps_values():
    target = {"a": {"b": 1, "c": [1]}, "d": 1}
    assert dc.merge(target, {"a": {"b": 2}, "d": 1, "e": 3}, overwrite=True) == [("a", "b")]
    assert target == {"a": {"b": 2, "c": [1]}, "d": 1, "e": 3}
    assert dc.merge(target, {"a": {"b": 9, "f": 4}, "d": 9}, overwrite=False) == []
    assert target == {"a": {"b": 2, "c": [1], "f": 4}, "d": 1, "e": 3}
    dc.merge(target, {"d": {}}, overwrite=True)  # an empty object over a value changes nothing
    assert target["d"] == 1


# -- defaults -----------------------------------------------------------------------------------------------

def test_the_image_s_defaults_fill_what_is_unset():
    result = build()
    assert result.configuration == {
        "StorageDirectory": "/var/lib/orthanc/db", "RemoteAccessAllowed": True, "AuthenticationEnabled": True,
        "HttpsCACertificates": "/etc/ssl/certs/ca-certificates.crt",
        "Plugins": ["/run/orthanc/plugins", "/usr/share/orthanc/plugins"],
        "Gdcm": {"Throttling": 4, "RestrictTransferSyntaxes": ["1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.4.91",
                                                               "1.2.840.10008.1.2.4.92", "1.2.840.10008.1.2.4.93"]},
        "OrthancExplorer2": {"Enable": True, "IsDefaultOrthancUI": True},
    }
    assert result.enabled_plugins == ["Gdcm", "OrthancExplorer2"]


def test_defaults_never_replace_a_value_set():
    result = build(("ORTHANC__STORAGE_DIRECTORY", "/data"), ("ORTHANC__AUTHENTICATION_ENABLED", "false"),
                   ("ORTHANC__ORTHANC_EXPLORER_2__IS_DEFAULT_ORTHANC_UI", "false"))
    assert result.configuration["StorageDirectory"] == "/data"
    assert result.configuration["AuthenticationEnabled"] is False
    assert result.configuration["OrthancExplorer2"] == {"Enable": True, "IsDefaultOrthancUI": False}


def test_a_plugin_s_defaults_come_only_when_it_is_enabled():
    assert "DicomWeb" not in build().configuration
    assert build(("DICOM_WEB_PLUGIN_ENABLED", "true")).configuration["DicomWeb"] == {"Enable": True}
    assert build(("ORTHANC__DICOM_WEB__ROOT", "/dw/")).configuration["DicomWeb"] == {"Root": "/dw/", "Enable": True}


def test_defaults_are_copies():
    first = build()
    first.configuration["Plugins"].append("/x")
    assert build().configuration["Plugins"] == ["/run/orthanc/plugins", "/usr/share/orthanc/plugins"]


# -- plugin switches ----------------------------------------------------------------------------------------

def test_the_python_plugin_is_enabled_by_its_script_its_switch_or_its_section():
    assert "Python" not in build().enabled_plugins
    assert "Python" in build(("ORTHANC__PYTHON_SCRIPT", "/x.py")).enabled_plugins
    assert "Python" in build(("PYTHON_PLUGIN_ENABLED", "true")).enabled_plugins
    assert "Python" in build(("ORTHANC__PYTHON__PATH", "/x.py")).enabled_plugins
    switched_off = build(("ORTHANC__PYTHON_SCRIPT", "/x.py"), ("PYTHON_PLUGIN_ENABLED", "false"))
    assert "Python" not in switched_off.enabled_plugins


def test_a_transfers_section_turns_the_image_s_cxx_transfers_plugin_on():
    """The trap of this image for this plugin: its options live in the section that enables the C++ one."""
    on = build(("ORTHANC__TRANSFERS__THREADS", "4"))
    assert "Transfers" in on.enabled_plugins
    assert "libOrthancTransfers.so" in on.libraries
    off = build(("ORTHANC__TRANSFERS__THREADS", "4"), ("TRANSFERS_PLUGIN_ENABLED", "false"))
    assert "Transfers" not in off.enabled_plugins
    assert "libOrthancTransfers.so" not in off.libraries
    assert off.configuration["Transfers"] == {"Threads": 4}


@pytest.mark.parametrize("value", ["False", "FALSE", "0", "no", "", "true"])
def test_only_false_exactly_switches_a_plugin_off(value):
    assert "Transfers" in build(("TRANSFERS_PLUGIN_ENABLED", value)).enabled_plugins


def test_switches_do_not_reach_the_configuration():
    result = build(("TRANSFERS_PLUGIN_ENABLED", "false"), ("PYTHON_PLUGIN_ENABLED", "true"),
                   ("VERBOSE_ENABLED", "true"))
    assert without_defaults(result) == {}
    assert result.special == {"VERBOSE_ENABLED": "true"}


def test_plugins_on_by_default_and_plugins_that_need_their_switch():
    assert "OrthancExplorer2" not in build(("ORTHANC_EXPLORER_2_ENABLED", "false")).enabled_plugins
    assert "Gdcm" not in build(("GDCM_PLUGIN_ENABLED", "false")).enabled_plugins
    web_viewer = build(("ORTHANC__WEB_VIEWER__X", "1"))  # the viewers' shared section enables none of them
    assert not {"OrthancWebViewer", "OsimisWebViewerBasic"} & set(web_viewer.enabled_plugins)
    assert "OsimisWebViewerBasic" in build(("OSIMIS_WEB_VIEWER1_PLUGIN_ENABLED", "true")).enabled_plugins


# -- what is refused ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("name, message", [
    ("TRANSFERS_ENABLED", "deprecated.*TRANSFERS_PLUGIN_ENABLED"),
    ("ORTHANC__REGISTERED_USERS_SECRET", "secrets"),
    ("NAME", "not a variable this module knows"),
    ("TRANSFERS_THREADS", "not a variable this module knows"),
])
def test_what_is_not_modelled_is_refused(name, message):
    with pytest.raises(dc.DockerConfigError, match=message):
        build((name, "x"))


def test_a_variable_set_twice_is_refused():
    with pytest.raises(dc.DockerConfigError, match="set twice"):
        build(("ORTHANC__NAME", "a"), ("ORTHANC__NAME", "b"))


# -- Dockerfiles --------------------------------------------------------------------------------------------

DOCKERFILE = """\
# syntax=docker/dockerfile:1
FROM debian:12 AS builder
COPY --chown=1:1 a.txt b/ /build/
FROM orthancteam/orthanc:26.4.2
COPY --from=builder /build /x
COPY ["with space/", "/dest/"]
ADD c.tar \\
    # a comment inside a continuation
    /opt/
ENV A=1 B="two words" \\
    C=three
ENV OLD the rest of the line
"""


def test_dockerfile_instructions():
    instructions = dc.dockerfile_instructions(DOCKERFILE)
    assert [w for w, _ in instructions] == ["FROM", "COPY", "FROM", "COPY", "COPY", "ADD", "ENV", "ENV"]
    assert instructions[5] == ("ADD", "c.tar /opt/")
    assert dc.base_image(instructions) == "orthancteam/orthanc:26.4.2"
    assert dc.dockerfile_env(instructions) == [("A", "1"), ("B", "two words"), ("C", "three"),
                                               ("OLD", "the rest of the line")]
    assert dc.dockerfile_copies(instructions) == [("COPY", ["a.txt", "b/"], "/build/"),
                                                  ("COPY", ["with space/"], "/dest/"), ("ADD", ["c.tar"], "/opt/")]


def test_dockerfile_env_of_the_last_stage_only():
    instructions = dc.dockerfile_instructions("FROM a\nENV X=1\nFROM orthancteam/orthanc:1\nENV Y=2\n")
    assert dc.dockerfile_env(instructions) == [("Y", "2")]


@pytest.mark.parametrize("text, message", [
    ("FROM orthancteam/orthanc:1\nENV X=$Y\n", "substitutions"),
    ("FROM a AS base\nFROM base\n", "stage"),
    ("RUN x\n", "no FROM"),
    ("FROM a\nRUN <<EOF\nx\nEOF\n", "heredocs"),
    ("FROM a\nRUN x \\\n", "continuation"),
])
def test_dockerfiles_this_module_cannot_read(text, message):
    with pytest.raises(dc.DockerConfigError, match=message):
        instructions = dc.dockerfile_instructions(text)
        dc.base_image(instructions)
        dc.dockerfile_env(instructions)


# -- compose files ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("text, result", [
    ("$$HOME", "$HOME"), ("a${X}b", "a1b"), ("$X", "1"), ("${UNSET}", ""), ("$UNSET-", "-"),
    ("${UNSET:-d}", "d"), ("${EMPTY:-d}", "d"), ("${EMPTY-d}", ""), ("${X:-d}", "1"),
    ("${X:?m}", "1"), ("${EMPTY?m}", ""), ("${X:+y}", "y"), ("${EMPTY:+y}", ""), ("${EMPTY+y}", "y"),
    ('{"p": "${X}"}', '{"p": "1"}'),
])
def test_compose_interpolation(text, result):
    assert dc.interpolate(text, {"X": "1", "EMPTY": ""}) == result


@pytest.mark.parametrize("text", ["${UNSET:?give it}", "${EMPTY:?give it}", "${UNSET?give it}"])
def test_required_compose_variables(text):
    with pytest.raises(dc.DockerConfigError, match="give it"):
        dc.interpolate(text, {"EMPTY": ""})


def test_nested_interpolation_is_refused():
    with pytest.raises(dc.DockerConfigError, match="not an interpolation"):
        dc.interpolate("${A:-${B}}", {})


def write_compose(tmp_path, text, dockerfile=None):
    (tmp_path / "compose.yaml").write_text(textwrap.dedent(text))
    if dockerfile is not None:
        (tmp_path / "Dockerfile").write_text(dockerfile)
    return tmp_path / "compose.yaml"


def test_a_service_s_environment_after_its_dockerfile_s(tmp_path):
    compose = write_compose(tmp_path, """\
        x-common: &common
          ORTHANC__TRANSFERS__THREADS: 8
        services:
          a:
            build: .
            environment:
              <<: *common
              ORTHANC__NAME: "${SITE:-a}"
              PYTHON_PLUGIN_ENABLED: "false"
          b:
            image: orthancteam/orthanc:26.4.2
            environment: ["ORTHANC__NAME=b", "ORTHANC__TRANSFERS__THREADS=2"]
        """, dockerfile="FROM orthancteam/orthanc:26.4.2\n"
                        "ENV PYTHON_PLUGIN_ENABLED=true ORTHANC__PYTHON_SCRIPT=/p.py\n")
    a = dc.service_configuration(compose, "a", {"SITE": "site-a"})
    assert without_defaults(a) == {"PythonScript": "/p.py", "Transfers": {"Threads": 8}, "Name": "site-a"}
    assert "Python" not in a.enabled_plugins  # the service's switch replaced the image's
    b = dc.service_configuration(compose, "b", {})
    assert without_defaults(b) == {"Name": "b", "Transfers": {"Threads": 2}}


@pytest.mark.parametrize("service, message", [
    ("a:\n    image: orthancteam/orthanc:26.4.2\n    environment:\n      TRANSFERS_PLUGIN_ENABLED: false\n",
     "must be quoted"),
    ("a:\n    image: orthancteam/orthanc:26.4.2\n    environment:\n      ORTHANC__NAME:\n", "without a value"),
    ("a:\n    image: orthancteam/orthanc:26.4.2\n    environment: [ORTHANC__NAME]\n", "without a value"),
    ("a:\n    image: orthancteam/orthanc:26.4.2\n    env_file: x.env\n", "env_file"),
    ("a:\n    image: orthancteam/orthanc:26.4.2\n    secrets: [s]\n", "secrets"),
    ("a:\n    image: orthancteam/orthanc:26.4.2\n    volumes: [./conf:/etc/orthanc:ro]\n", "/etc/orthanc"),
    ("a:\n    image: orthancteam/orthanc:26.4.2\n    volumes: [./o.json:/etc/orthanc/o.json]\n", "/etc/orthanc"),
    ("a:\n    image: orthancteam/orthanc:26.4.2\n    volumes: [{type: bind, source: ., target: /run}]\n", "/run"),
    ("a:\n    image: jodogne/orthanc:1.12.0\n", "neither built here"),
    ("b:\n    image: orthancteam/orthanc:26.4.2\n", "no service 'a'"),
])
def test_services_this_module_cannot_tell(tmp_path, service, message):
    compose = write_compose(tmp_path, "services:\n  " + service)
    with pytest.raises(dc.DockerConfigError, match=message):
        dc.service_configuration(compose, "a", {})


def test_a_volume_elsewhere_is_fine(tmp_path):
    compose = write_compose(tmp_path, "services:\n  a:\n    image: orthancteam/orthanc:26.4.2\n"
                                      "    volumes: [db:/var/lib/orthanc/db, /etc/orthanc-other]\n")
    assert dc.service_configuration(compose, "a", {}).configuration["StorageDirectory"] == "/var/lib/orthanc/db"


def test_the_command_line(tmp_path, capsys):
    compose = write_compose(tmp_path, "services:\n  a:\n    image: orthancteam/orthanc:26.4.2\n"
                                      "    environment: {ORTHANC__NAME: x, PYTHON_PLUGIN_ENABLED: 'true'}\n")
    assert dc.main([str(compose), "a"]) == 0
    assert '"Name": "x"' in capsys.readouterr().out
    assert dc.main([str(compose), "a", "--plugins"]) == 0
    assert capsys.readouterr().out.split() == ["Gdcm", "Python", "OrthancExplorer2"]
    assert dc.main([str(compose), "nope"]) == 1
    assert "no service 'nope'" in capsys.readouterr().err
