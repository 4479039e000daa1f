"""The Orthanc configuration a container of the orthancteam/orthanc image builds from its environment.

    .venv/bin/python -m tools.docker_config docker/compose.yaml orthanc-a [--plugins]

prints the JSON configuration that the service ``orthanc-a`` of that compose file gets (``--plugins``: the
plugins that the image enables, one a line). Compose variables (``${NAME}``) come from this process's
environment; a ``.env`` file is not read.

At each start, the image's entry point writes ``/tmp/orthanc.json`` and links the libraries of the plugins it
considers enabled into Orthanc's plugins folder. Its rules, as the Orthanc Book documents them (page
"orthancteam/orthanc Docker images", book/users/docker-orthancteam.html, sections "Environment variables",
"Special environment variables", "Mixing configuration", "Default configuration" and "Plugins") and as the
image's startup script applies them (orthanc-builder, docker/orthanc/: generateConfiguration.py,
configurator.py, helpers.py, env-var-non-standards.json, orthanc-defaults.json, plugins-def.json, read at
tag 26.4.2, the tag of docker/Dockerfile; the same up to 26.8.1, where 26.7.0 added ``ORTHANC_PASSWORD`` and
refuses to start with deprecated names, or with authentication on and no user):

- ``ORTHANC__A_B__C_D`` sets ``{"AB": {"CD": value}}``: ``__`` goes down one level, each word between ``_``
  keeps its first character and lowercases the rest (``QUERY_RETRIEVE_SIZE`` -> ``QueryRetrieveSize``).
  Names where this fails (two capitals in a row) have fixed aliases (``ALIASES``); ``POSTGRESQL``, ``MYSQL``
  and ``OHIF`` as the first level become ``PostgreSQL``, ``MySQL`` and ``OHIF``.
- A value is parsed as JSON (numbers, ``true``/``false``, ``null``, objects, arrays); one that is not
  valid JSON is kept as a string (``/var/lib``, but also ``007``). One that starts with ``{`` or ``[`` and
  does not parse is refused here: the image would keep the string, and Orthanc refuse it.
- ``ORTHANC_JSON`` holds a whole configuration (C and C++ comments allowed), merged like the rest.
- Objects merge key by key; any other value replaces the one before (the image logs a warning). The
  image reads files, then secrets' files, then the variables in the order of the process's environment,
  which nothing documents: two variables that set the same value differently are refused here.
- Then defaults fill what is still unset (``ORTHANC_DEFAULTS``, then each enabled plugin's defaults).
- A plugin is enabled when its configuration section exists (the Python plugin: also ``PythonScript``),
  when its switch (``PYTHON_PLUGIN_ENABLED``...) is set to anything but ``false``, or by default
  (Orthanc Explorer 2, GDCM); its switch set to exactly ``false`` disables it. The web viewers need their
  switch. So a ``Transfers`` section alone turns the image's C++ Transfers plugin on.

What this module does not model it refuses instead of guessing: configuration files (``/etc/orthanc``) and
secrets (``/run/secrets``, ``*_SECRET`` variables), ``env_file``, variables it does not know (among them the
deprecated names of 2020 that the image still maps, such as ``NAME``), substitutions in a Dockerfile's ENV.
"""

import argparse
import json
import os
import re
import shlex
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple


class DockerConfigError(ValueError):
    """A configuration that the image would refuse, or that this module cannot tell."""


# -- The image's tables (docker/orthanc/*.json of orthanc-builder at 26.4.2) -----------------------------

ALIASES: Dict[str, str] = {  # env-var-non-standards.json
    "ORTHANC__CASE_SENSITIVE_PN": "CaseSensitivePN",
    "ORTHANC__HTTPS_CA_CERTIFICATES": "HttpsCACertificates",
    "ORTHANC__STORE_MD5_FOR_ATTACHMENTS": "StoreMD5ForAttachments",
    "ORTHANC__ORTHANC_EXPLORER_2__IS_DEFAULT_ORTHANC_UI": "OrthancExplorer2.IsDefaultOrthancUI",
    "ORTHANC__ORTHANC_EXPLORER_2__ENABLE_LINK_TO_LEGACY_UI": "OrthancExplorer2.EnableLinkToLegacyUi",
    "OE2_ENABLED": "OrthancExplorer2.IsDefaultOrthancUI",
    "ORTHANC__POSTGRESQL": "PostgreSQL",
    "ORTHANC__MYSQL": "MySQL",
    "ORTHANC__MYSQL__SSL_CA_CERTIFICATES": "MySQL.SslCACertificates",
    "ORTHANC__OHIF": "OHIF",
}

FIRST_LEVEL_NAMES = {"POSTGRESQL": "PostgreSQL", "MYSQL": "MySQL", "OHIF": "OHIF"}  # configurator.py

ORTHANC_DEFAULTS: Dict[str, Any] = {  # orthanc-defaults.json ("Default configuration" in the book)
    "StorageDirectory": "/var/lib/orthanc/db",
    "RemoteAccessAllowed": True,
    "AuthenticationEnabled": True,
    "HttpsCACertificates": "/etc/ssl/certs/ca-certificates.crt",
    "Plugins": ["/run/orthanc/plugins", "/usr/share/orthanc/plugins"],
}

# Variables the entry point reads to run Orthanc ("Special environment variables" in the book); they do
# not reach the configuration.
SPECIAL_VARIABLES = frozenset({
    "VERBOSE_STARTUP", "VERBOSE_ENABLED", "TRACE_ENABLED", "NO_JOBS", "LOGDIR", "LOGFILE", "MALLOC_ARENA_MAX",
    "BEFORE_ORTHANC_STARTUP_SCRIPT", "FORCE_HOST_ID", "GENERATE_HOST_ID_IF_MISSING",
})


@dataclass(frozen=True)
class Plugin:
    """One entry of plugins-def.json: how the image decides whether the plugin is enabled."""
    name: str
    switch: str
    libraries: Tuple[str, ...]
    section: str = ""  # its configuration section, when it is not its name
    legacy_switch: str = ""  # deprecated since 2020
    by_default: bool = False
    switch_required: bool = False  # its section alone does not enable it
    root_setting: str = ""  # a top-level option that enables it too
    defaults: Mapping[str, Any] = field(default_factory=dict)

    @property
    def config_section(self) -> str:
        return self.section or self.name


_ENABLE = {"Enable": True}
_MUST = "MUST BE DEFINED BY YOU"
PLUGINS: Tuple[Plugin, ...] = (
    Plugin("Authorization", "AUTHORIZATION_PLUGIN_ENABLED", ("libOrthancAuthorization.so",),
           legacy_switch="AUTHZ_ENABLED"),
    Plugin("ConnectivityChecks", "CONNECTIVITY_CHECKS_PLUGIN_ENABLED", ("libConnectivityChecks.so",)),
    Plugin("DicomWeb", "DICOM_WEB_PLUGIN_ENABLED", ("libOrthancDicomWeb.so",), legacy_switch="DW_ENABLED",
           defaults=_ENABLE),
    Plugin("Gdcm", "GDCM_PLUGIN_ENABLED", ("libOrthancGdcm.so",), by_default=True, defaults={
        "Throttling": 4,
        "RestrictTransferSyntaxes": ["1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.4.91",
                                     "1.2.840.10008.1.2.4.92", "1.2.840.10008.1.2.4.93"]}),
    Plugin("OrthancWebViewer", "ORTHANC_WEB_VIEWER_PLUGIN_ENABLED", ("libOrthancWebViewer.so",),
           section="WebViewer", legacy_switch="OWV_ENABLED", switch_required=True),
    Plugin("StoneWebViewer", "STONE_WEB_VIEWER_PLUGIN_ENABLED", ("libStoneWebViewer.so",), switch_required=True),
    Plugin("OsimisWebViewerBasic", "OSIMIS_WEB_VIEWER1_PLUGIN_ENABLED", ("libOsimisWebViewer.so",),
           section="WebViewer", legacy_switch="WVB_ENABLED", switch_required=True),
    Plugin("OsimisWebViewerBasicAlpha", "OSIMIS_WEB_VIEWER1_ALPHA_PLUGIN_ENABLED", ("libOsimisWebViewerAlpha.so",),
           section="WebViewer", legacy_switch="WVB_ALPHA_ENABLED", switch_required=True),
    Plugin("PostgreSQL", "POSTGRESQL_PLUGIN_ENABLED",
           ("libOrthancPostgreSQLIndex.so", "libOrthancPostgreSQLStorage.so"), legacy_switch="PG_ENABLED", defaults={
               "EnableIndex": True, "EnableStorage": False, "Port": 5432, "Host": "HOST MUST BE DEFINED",
               "Database": "postgres", "Username": "postgres", "Password": "postgres", "EnableSsl": False,
               "Lock": False}),
    Plugin("MySQL", "MYSQL_PLUGIN_ENABLED", ("libOrthancMySQLIndex.so", "libOrthancMySQLStorage.so"),
           legacy_switch="MYSQL_ENABLED", defaults={
               "EnableIndex": True, "EnableStorage": False, "Port": 3306, "Host": "HOST MUST BE DEFINED",
               "Database": "mysql", "Username": "root", "Password": "mysql", "Lock": False}),
    Plugin("Python", "PYTHON_PLUGIN_ENABLED", ("libOrthancPython.so",), root_setting="PythonScript"),
    Plugin("ServeFolders", "SERVE_FOLDERS_PLUGIN_ENABLED", ("libServeFolders.so",),
           legacy_switch="SERVEFOLDERS_ENABLED"),
    Plugin("Transfers", "TRANSFERS_PLUGIN_ENABLED", ("libOrthancTransfers.so",), legacy_switch="TRANSFERS_ENABLED"),
    Plugin("Worklists", "WORKLISTS_PLUGIN_ENABLED", ("libOrthancWorklists.so",), legacy_switch="WL_ENABLED",
           defaults=_ENABLE),
    Plugin("Housekeeper", "HOUSEKEEPER_PLUGIN_ENABLED", ("libHousekeeper.so",), defaults=_ENABLE),
    Plugin("DelayedDeletion", "DELAYED_DELETION_PLUGIN_ENABLED", ("libDelayedDeletion.so",), defaults=_ENABLE),
    Plugin("MultitenantDicom", "MULTITENANT_DICOM_PLUGIN_ENABLED", ("libMultitenantDicom.so",)),
    Plugin("AdvancedStorage", "ADVANCED_STORAGE_PLUGIN_ENABLED", ("libAdvancedStorage.so",), defaults=_ENABLE),
    Plugin("Education", "EDUCATION_PLUGIN_ENABLED", ("libOrthancEducation.so",), defaults=_ENABLE),
    Plugin("Wsi", "WSI_PLUGIN_ENABLED", ("libOrthancWSI.so",), legacy_switch="WSI_ENABLED"),
    Plugin("Odbc", "ODBC_PLUGIN_ENABLED", ("libOrthancOdbcIndex.so", "libOrthancOdbcStorage.so"), defaults={
        "EnableIndex": True, "EnableStorage": False, "IndexConnectionString": "MUST BE DEFINED",
        "StorageConnectionString": "MUST BE DEFINED"}),
    Plugin("Tcia", "TCIA_PLUGIN_ENABLED", ("libOrthancTcia.so",), defaults=_ENABLE),
    Plugin("Indexer", "INDEXER_PLUGIN_ENABLED", ("libOrthancIndexer.so",), defaults=_ENABLE),
    Plugin("Neuro", "NEURO_PLUGIN_ENABLED", ("libOrthancNeuro.so",), defaults=_ENABLE),
    Plugin("AzureBlobStorage", "AZURE_BLOB_STORAGE_PLUGIN_ENABLED", ("libOrthancAzureBlobStorage.so",),
           legacy_switch="AZSTOR_ENABLED", defaults={"ConnectionString": _MUST, "ContainerName": _MUST}),
    Plugin("AwsS3Storage", "AWS_S3_STORAGE_PLUGIN_ENABLED", ("libOrthancAwsS3Storage.so",),
           defaults={"BucketName": _MUST, "Region": _MUST}),
    Plugin("GoogleCloudStorage", "GOOGLE_CLOUD_STORAGE_PLUGIN_ENABLED", ("libOrthancGoogleCloudStorage.so",),
           defaults={"ServiceAccountFile": _MUST, "BucketName": _MUST}),
    Plugin("OrthancExplorer2", "ORTHANC_EXPLORER_2_ENABLED", ("libOrthancExplorer2.so",), by_default=True,
           defaults={"Enable": True, "IsDefaultOrthancUI": True}),
    Plugin("VolView", "VOLVIEW_PLUGIN_ENABLED", ("libOrthancVolView.so",)),
    Plugin("Ohif", "OHIF_PLUGIN_ENABLED", ("libOrthancOHIF.so",)),
    Plugin("STL", "STL_PLUGIN_ENABLED", ("libOrthancSTL.so",), defaults=_ENABLE),
    Plugin("Java", "JAVA_PLUGIN_ENABLED", ("libOrthancJava.so",), defaults={
        "Enable": True, "Classpath": _MUST, "InitializationClass": _MUST}),
    Plugin("PixelsMasker", "PIXELS_MASKER_PLUGIN_ENABLED", ("libOrthancPixelsMasker.so",), defaults=_ENABLE),
)
SWITCHES = {p.switch: p for p in PLUGINS}
LEGACY_SWITCHES = {p.legacy_switch: p for p in PLUGINS if p.legacy_switch}


# -- Environment variables -> JSON ------------------------------------------------------------------------

def camel_case(word_list: str) -> str:
    """``QUERY_RETRIEVE_SIZE`` -> ``QueryRetrieveSize``: each word's first character kept, the rest lowercased."""
    words = word_list.split("_")
    if any(not w for w in words):
        # The image's startup script fails on an empty word (IndexError) and the container does not start.
        raise DockerConfigError(f"empty word in {word_list!r} (a '_' too many): the container would not start")
    return "".join(w[0] + w[1:].lower() for w in words)


def json_path(name: str) -> Tuple[str, ...]:
    """The configuration path that an ``ORTHANC__...`` variable (or an alias) sets."""
    if name in ALIASES:
        return tuple(ALIASES[name].split("."))
    if not name.startswith("ORTHANC__"):
        raise DockerConfigError(f"{name} is not an ORTHANC__ variable")
    levels = name[len("ORTHANC__"):].split("__")
    path = []
    for i, level in enumerate(levels):
        if i == 0 and len(levels) > 1 and level in FIRST_LEVEL_NAMES:
            path.append(FIRST_LEVEL_NAMES[level])
        else:
            path.append(camel_case(level))
    return tuple(path)


def json_value(text: str) -> Any:
    """A variable's value as the image reads it: JSON when it parses, the string itself otherwise."""
    try:
        return json.loads(text)
    except ValueError:
        return text


def strip_json_comments(text: str) -> str:
    """``//`` and ``/* */`` comments outside JSON strings, each replaced by a space (as the image does)."""
    out = []
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if c == '"':
            j = i + 1
            while j < n and text[j] != '"':
                j += 2 if text[j] == "\\" else 1
            out.append(text[i:j + 1])
            i = j + 1
        elif text.startswith("//", i):
            end = text.find("\n", i)
            i = n if end < 0 else end
            out.append(" ")
        elif text.startswith("/*", i):
            end = text.find("*/", i + 2)
            i = n if end < 0 else end + 2
            out.append(" ")
        else:
            out.append(c)
            i += 1
    return "".join(out)


def nest(path: Sequence[str], value: Any) -> Dict[str, Any]:
    for key in reversed(path[1:]):
        value = {key: value}
    return {path[0]: value}


def merge(target: Dict[str, Any], source: Mapping[str, Any], *, overwrite: bool,
          path: Tuple[str, ...] = ()) -> List[Tuple[str, ...]]:
    """Merges ``source`` into ``target`` as the image does; returns the paths whose value was replaced.

    Objects merge key by key. Another value replaces the one in ``target`` when ``overwrite`` (files,
    variables), and is left out otherwise (defaults).
    """
    replaced = []
    for key, value in source.items():
        here = path + (key,)
        if isinstance(value, dict) and key in target:
            if isinstance(target[key], dict):
                replaced += merge(target[key], value, overwrite=overwrite, path=here)
            elif value:
                # The startup script merges into whatever is there and fails on a non-object.
                raise DockerConfigError(f"{'.'.join(here)}: an object over a {type(target[key]).__name__}: "
                                        "the container would not start")
        elif key in target:
            if overwrite:
                if target[key] != value:
                    replaced.append(here)
                target[key] = value
        else:
            target[key] = value
    return replaced


@dataclass
class ImageConfiguration:
    configuration: Dict[str, Any]
    enabled_plugins: List[str]
    special: Dict[str, str]  # the special variables, for the entry point

    @property
    def libraries(self) -> List[str]:
        """The plugin libraries that the image links into Orthanc's plugins folder."""
        by_name = {p.name: p for p in PLUGINS}
        return [lib for name in self.enabled_plugins for lib in by_name[name].libraries]


def enabled_plugins(configuration: Mapping[str, Any], switches: Mapping[str, str]) -> List[str]:
    """The plugins the image enables, in its order, for a configuration and the plugin switches set."""
    result = []
    for plugin in PLUGINS:
        value = switches.get(plugin.switch)
        switched_on = value is not None and value != "false"
        if plugin.by_default:
            enabled = True
        elif plugin.switch_required:
            enabled = switched_on
        else:
            enabled = (switched_on or plugin.config_section in configuration
                       or bool(plugin.root_setting) and plugin.root_setting in configuration)
        if value == "false":
            enabled = False
        if enabled:
            result.append(plugin.name)
    return result


def configuration_from_environment(environment: Sequence[Tuple[str, str]]) -> ImageConfiguration:
    """What the image makes of these variables (no configuration file, no secret).

    ``environment``: (name, value) pairs, each name once. Raises :class:`DockerConfigError` for what the
    image would refuse or what this module does not model.
    """
    names = [name for name, _ in environment]
    if len(set(names)) != len(names):
        raise DockerConfigError(f"a variable is set twice: {sorted(n for n in set(names) if names.count(n) > 1)}")
    configuration: Dict[str, Any] = {}
    switches: Dict[str, str] = {}
    special: Dict[str, str] = {}
    set_by: Dict[Tuple[str, ...], str] = {}
    problems: List[str] = []
    for name, value in environment:
        if not isinstance(value, str):
            raise DockerConfigError(f"{name}: the value of a variable is a string, not {value!r}")
        if name.endswith("_SECRET"):
            problems.append(f"{name}: secrets are not modelled here")
        elif name in LEGACY_SWITCHES:
            problems.append(f"{name} is deprecated (since 2020): use {LEGACY_SWITCHES[name].switch}")
        elif name == "ORTHANC_JSON" or name.startswith("ORTHANC__") or name in ALIASES:
            if name == "ORTHANC_JSON":
                try:
                    source = json.loads(strip_json_comments(value))
                except ValueError as e:
                    problems.append(f"ORTHANC_JSON is not valid JSON ({e}): the container would not start")
                    continue
                if not isinstance(source, dict):
                    problems.append("ORTHANC_JSON must be a JSON object")
                    continue
            else:
                parsed = json_value(value)
                if isinstance(parsed, str) and parsed.lstrip()[:1] in ("{", "["):
                    # The image would keep it as a string, which Orthanc refuses where it expects an object.
                    problems.append(f"{name} looks like JSON but does not parse (a quote or a backslash in "
                                    "a password?)")
                    continue
                source = nest(json_path(name), parsed)
            for replaced in merge(configuration, source, overwrite=True):
                problems.append(f"{name} and {set_by.get(replaced, 'another variable')} both set "
                                f"{'.'.join(replaced)}: which one wins depends on the order of the environment")
            for leaf in _leaves(source):
                set_by.setdefault(leaf, name)
        elif name in SWITCHES:
            switches[name] = value
        elif name in SPECIAL_VARIABLES:
            special[name] = value
        else:
            problems.append(f"{name}: not a variable this module knows (the image may map deprecated names of "
                            "2020, listed in its env-var-legacy.json)")
    if problems:
        raise DockerConfigError("; ".join(problems))
    merge(configuration, json.loads(json.dumps(ORTHANC_DEFAULTS)), overwrite=False)
    plugins = enabled_plugins(configuration, switches)
    for plugin in PLUGINS:
        if plugin.name in plugins and plugin.defaults:
            merge(configuration, {plugin.config_section: json.loads(json.dumps(plugin.defaults))}, overwrite=False)
    return ImageConfiguration(configuration, plugins, special)


def _leaves(obj: Mapping[str, Any], path: Tuple[str, ...] = ()) -> List[Tuple[str, ...]]:
    out = []
    for key, value in obj.items():
        if isinstance(value, dict) and value:
            out += _leaves(value, path + (key,))
        else:
            out.append(path + (key,))
    return out


# -- Dockerfiles ------------------------------------------------------------------------------------------

def dockerfile_instructions(text: str) -> List[Tuple[str, str]]:
    """(INSTRUCTION, arguments) of a Dockerfile: comments dropped, ``\\`` continuations joined."""
    if re.search(r"<<-?[\"']?\w", text):
        raise DockerConfigError("heredocs are not modelled")
    instructions = []
    current: List[str] = []
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("#") or (not stripped and current):
            continue
        if not stripped:
            continue
        if stripped.endswith("\\"):
            current.append(stripped[:-1].strip())
            continue
        current.append(stripped)
        joined = " ".join(p for p in current if p)
        current = []
        word, _, rest = joined.partition(" ")
        instructions.append((word.upper(), rest.strip()))
    if current:
        raise DockerConfigError("the Dockerfile ends with a continuation")
    return instructions


def final_stage(instructions: Sequence[Tuple[str, str]]) -> List[Tuple[str, str]]:
    """The instructions of the last stage, from its FROM on."""
    starts = [i for i, (word, _) in enumerate(instructions) if word == "FROM"]
    if not starts:
        raise DockerConfigError("the Dockerfile has no FROM")
    return list(instructions[starts[-1]:])


def base_image(instructions: Sequence[Tuple[str, str]]) -> str:
    """The image of the last FROM (``--platform`` left aside); one named after an earlier stage is refused."""
    args = final_stage(instructions)[0][1].split()
    args = [a for a in args if not a.startswith("--")]
    stages = {a[2].lower() for word, rest in instructions if word == "FROM"
              for a in [rest.split()] if len(a) >= 3 and a[1].lower() == "as"}
    if args[0].lower() in stages or "$" in args[0]:
        raise DockerConfigError(f"FROM {args[0]}: a stage or a variable is not modelled")
    return args[0]


def dockerfile_env(instructions: Sequence[Tuple[str, str]]) -> List[Tuple[str, str]]:
    """The ENV variables of the last stage, in order (a later one replaces an earlier one of the same name)."""
    env: Dict[str, str] = {}
    for word, rest in final_stage(instructions):
        if word != "ENV":
            continue
        if "$" in rest:
            raise DockerConfigError(f"ENV {rest}: substitutions are not modelled")
        first = rest.split(None, 1)
        if "=" not in first[0]:  # the old form: ENV NAME value
            env[first[0]] = first[1] if len(first) > 1 else ""
            continue
        for pair in shlex.split(rest):
            name, sep, value = pair.partition("=")
            if not sep:
                raise DockerConfigError(f"ENV {rest}: {pair!r} has no '='")
            env[name] = value
    return list(env.items())


def dockerfile_copies(instructions: Sequence[Tuple[str, str]]) -> List[Tuple[str, List[str], str]]:
    """(COPY or ADD, sources, destination) of every stage; flags (``--chown``...) dropped."""
    copies = []
    for word, rest in instructions:
        if word not in ("COPY", "ADD"):
            continue
        if rest.startswith("["):
            parts = json.loads(rest)
        else:
            parts = shlex.split(rest)
        flags = [p for p in parts if p.startswith("--")]
        parts = [p for p in parts if not p.startswith("--")]
        if any(f.startswith("--from") for f in flags):
            continue  # from another stage or image, not from the build context
        if len(parts) < 2:
            raise DockerConfigError(f"{word} {rest}: a source and a destination are needed")
        copies.append((word, parts[:-1], parts[-1]))
    return copies


# -- Compose files ----------------------------------------------------------------------------------------

_TOKEN = re.compile(r"\$(\$|\{[^}]*\}|[A-Za-z_][A-Za-z0-9_]*)")
_BRACED = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?+])(.*))?", re.DOTALL)


def interpolate(text: str, variables: Mapping[str, str]) -> str:
    """Compose's interpolation: ``$$`` (a ``$``), ``$NAME``, ``${NAME}``, ``${NAME:-default}`` (also when
    empty), ``${NAME-default}`` (when unset), ``${NAME:?message}`` and ``${NAME?message}`` (required: an
    error when unset, or also when empty), ``${NAME:+other}`` and ``${NAME+other}``. An unset variable
    without a default is empty. Nested substitutions are refused."""
    def replace(m: "re.Match[str]") -> str:
        token = m.group(1)
        if token == "$":
            return "$"
        if not token.startswith("{"):
            return variables.get(token) or ""
        braced = _BRACED.fullmatch(token[1:-1])
        if braced is None or "$" in (braced.group(3) or ""):
            raise DockerConfigError(f"${token}: not an interpolation this module models")
        name, op, arg = braced.group(1), braced.group(2), braced.group(3) or ""
        value = variables.get(name)
        unset = value is None or (value == "" and op is not None and op.startswith(":"))
        if op in ("-", ":-"):
            return arg if unset else value
        if op in ("?", ":?"):
            if unset:
                raise DockerConfigError(f"required variable {name} is missing a value: {arg}")
            return value
        if op in ("+", ":+"):
            return "" if unset else arg
        return value or ""
    return _TOKEN.sub(replace, text)


def _interpolate_all(obj: Any, variables: Mapping[str, str]) -> Any:
    if isinstance(obj, str):
        return interpolate(obj, variables)
    if isinstance(obj, list):
        return [_interpolate_all(v, variables) for v in obj]
    if isinstance(obj, dict):
        return {k: _interpolate_all(v, variables) for k, v in obj.items()}
    return obj


def load_compose(path: Path, variables: Optional[Mapping[str, str]] = None) -> Dict[str, Any]:
    """A compose file, its values interpolated with ``variables`` (YAML anchors and ``<<`` merges resolved)."""
    import yaml  # the test extra's PyYAML; only this function needs it

    document = yaml.safe_load(Path(path).read_text())
    if not isinstance(document, dict) or not isinstance(document.get("services"), dict):
        raise DockerConfigError(f"{path}: no services")
    return _interpolate_all(document, variables or {})


def service_environment(service: Mapping[str, Any]) -> List[Tuple[str, str]]:
    """A service's ``environment``, mapping or list, as strings (an unquoted boolean is refused: YAML 1.1 and
    1.2 parsers read ``yes`` and ``on`` differently)."""
    env = service.get("environment") or {}
    pairs: List[Tuple[str, Any]] = []
    if isinstance(env, list):
        for item in env:
            name, sep, value = str(item).partition("=")
            pairs.append((name, value if sep else None))
    else:
        pairs = list(env.items())
    result = []
    for name, value in pairs:
        if value is None:
            raise DockerConfigError(f"{name}: a variable without a value (taken from the shell) is not modelled")
        if isinstance(value, bool) or not isinstance(value, (str, int)):
            raise DockerConfigError(f"{name}: {value!r} must be quoted")
        result.append((name, str(value)))
    return result


UNMODELLED_SERVICE_KEYS = ("env_file", "secrets", "configs", "extends")
CONFIG_FOLDERS = ("/etc/orthanc", "/run/secrets")


def service_configuration(compose_path: Path, service_name: str,
                          variables: Optional[Mapping[str, str]] = None) -> ImageConfiguration:
    """The configuration that a service of a compose file gets from the image (its Dockerfile's ENV, when it
    is built, then its ``environment``, which replaces variables of the same name)."""
    compose_path = Path(compose_path)
    compose = load_compose(compose_path, variables)
    service = compose["services"].get(service_name)
    if not isinstance(service, dict):
        raise DockerConfigError(f"{compose_path}: no service {service_name!r}")
    for key in UNMODELLED_SERVICE_KEYS:
        if key in service:
            raise DockerConfigError(f"{service_name}: {key} is not modelled")
    for volume in service.get("volumes") or []:
        target = volume_target(volume)
        if any(_overlaps(target, folder) for folder in CONFIG_FOLDERS):
            raise DockerConfigError(f"{service_name}: a volume on {target} brings configuration files, not modelled")
    environment: Dict[str, str] = {}
    build = service.get("build")
    if build is not None:
        dockerfile = build_dockerfile(compose_path, build)
        instructions = dockerfile_instructions(dockerfile.read_text())
        if not base_image(instructions).startswith("orthancteam/orthanc:"):
            raise DockerConfigError(f"{dockerfile}: not built on an orthancteam/orthanc image")
        environment.update(dockerfile_env(instructions))
    elif not str(service.get("image", "")).startswith("orthancteam/orthanc:"):
        raise DockerConfigError(f"{service_name}: neither built here nor an orthancteam/orthanc image")
    environment.update(service_environment(service))
    return configuration_from_environment(list(environment.items()))


def volume_target(volume: Any) -> str:
    """Where a volume of a service is mounted (long or short syntax)."""
    if isinstance(volume, dict):
        return str(volume.get("target", ""))
    parts = str(volume).split(":")
    return parts[1] if len(parts) > 1 else parts[0]


def _overlaps(target: str, folder: str) -> bool:
    target = target.rstrip("/") or "/"
    return target == folder or folder.startswith(target.rstrip("/") + "/") or target.startswith(folder + "/")


def build_dockerfile(compose_path: Path, build: Any) -> Path:
    """The Dockerfile of a service's ``build`` (a context folder, or ``context`` and ``dockerfile``)."""
    if isinstance(build, str):
        build = {"context": build}
    context = (compose_path.parent / build.get("context", ".")).resolve()
    return context / build.get("dockerfile", "Dockerfile")


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("compose", type=Path)
    parser.add_argument("service")
    parser.add_argument("--plugins", action="store_true", help="print the enabled plugins instead")
    args = parser.parse_args(argv)
    try:
        result = service_configuration(args.compose, args.service, os.environ)
    except DockerConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    if args.plugins:
        print("\n".join(result.enabled_plugins))
    else:
        print(json.dumps(result.configuration, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
