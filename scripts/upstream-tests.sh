#!/usr/bin/env bash
# Runs Orthanc's own upstream integration tests (the orthanc-tests repository, not part of this project:
# give the path of a checkout) against one Orthanc that loads this plugin:
#   transfers  Plugins/Transfers/Run.py (the C++ Transfers plugin's tests: 4 tests)
#   core       Tests/Run.py with this plugin loaded
#   core-bare  Tests/Run.py without it (the baseline)
#   all        the three, then the core tests whose result differs with and without the plugin
#
#   scripts/upstream-tests.sh [--suite S] [--chroot DIR] [--python PY] ORTHANC_TESTS_CHECKOUT [-- ARGS]
#
# The configuration is upstream's GenerateConfigurationForTests.py, run unchanged except that the default
# configuration it downloads is the one the Orthanc under test writes (`Orthanc --config=FILE`): this
# machine may not reach orthanc.uclouvain.be. Then StorageDirectory goes to a temporary folder and the
# Python plugin with transfers_plugin/plugin.py is added. The tests use Orthanc's ports 8042/4242 (the
# peers of the generated configuration point there) and, for Tests/Run.py, 5000/5001 for its second Orthanc.
#
# ORTHANC_BINARY and ORTHANC_PYTHON_PLUGIN choose another Orthanc (as for tools/orthanc_launcher.py).
# --chroot DIR runs Orthanc inside a root filesystem (e.g. a Debian 13 one, /usr/sbin/Orthanc in it; /tmp,
# /proc, /dev and this checkout bind-mounted into it at the same paths). The tests' Python needs httplib2,
# pillow, pydicom, pynetdicom and numpy: --python PY, or a venv made in $TRANSFERS_CACHE_DIR/upstream-venv.
# ARGS after -- go to the upstream Run.py (unittest names, e.g. Orthanc.test_pull).
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
suite=transfers
chroot_dir=""
python=""
while [ $# -gt 0 ]; do
  case "$1" in
    --suite) suite="$2"; shift 2 ;;
    --chroot) chroot_dir="$2"; shift 2 ;;
    --python) python="$2"; shift 2 ;;
    -h|--help) sed -n '2,21p' "$0"; exit 0 ;;
    --) shift; break ;;
    -*) echo "unknown option $1" >&2; exit 2 ;;
    *) checkout="$(cd "$1" && pwd)"; shift ;;
  esac
done
extra=("$@")
[ -n "${checkout:-}" ] && [ -f "$checkout/GenerateConfigurationForTests.py" ] || {
  echo "give the path of an orthanc-tests checkout (with GenerateConfigurationForTests.py)" >&2; exit 2; }
case "$suite" in transfers|core|core-bare|all) ;; *) echo "unknown suite $suite" >&2; exit 2 ;; esac

if [ -z "$python" ]; then
  venv="${TRANSFERS_CACHE_DIR:-$HOME/.cache/orthanc-transfers-py}/upstream-venv"
  if [ ! -x "$venv/bin/python" ]; then
    /usr/bin/python3 -m venv "$venv"
    "$venv/bin/pip" install -q httplib2 pillow pydicom pynetdicom numpy
  fi
  python="$venv/bin/python"
fi

work="$(mktemp -d /tmp/upstream-tests.XXXXXX)"
if [ -n "$chroot_dir" ]; then
  for d in /tmp /proc /dev "$repo"; do
    findmnt "$chroot_dir$d" >/dev/null || { echo "$d is not bind-mounted at $chroot_dir$d" >&2; exit 2; }
  done
  orthanc="$work/orthanc-in-chroot.sh"
  printf '#!/bin/sh\nexec chroot %q %q "$@"\n' "$chroot_dir" "${ORTHANC_BINARY:-/usr/sbin/Orthanc}" > "$orthanc"
  chmod +x "$orthanc"
  plugin="${ORTHANC_PYTHON_PLUGIN:-$(cd "$chroot_dir" && ls usr/lib/orthanc/libOrthancPython.so* | sort | tail -1)}"
  plugin="/${plugin#/}"
else
  orthanc="${ORTHANC_BINARY:-$(command -v Orthanc || echo /usr/sbin/Orthanc)}"
  plugin="${ORTHANC_PYTHON_PLUGIN:-$(ls /usr/lib/orthanc/libOrthancPython.so* | sort | tail -1)}"
fi

for port in 8042 4242 5000 5001; do
  if ss -ltn "sport = :$port" | grep -q LISTEN; then echo "port $port is in use" >&2; exit 2; fi
done

pid=""
stop_orthanc() {
  if [ -n "$pid" ]; then kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; pid=""; fi
}
trap stop_orthanc EXIT

# configure NAME WITH_PLUGIN: $work/NAME.json from upstream's generator and the default configuration
configure() {
  local name="$1" with_plugin="$2"
  "$orthanc" --config="$work/default.json"
  (cd "$work" && "$python" - "$checkout/GenerateConfigurationForTests.py" "$work/default.json" "$work/$name.json" <<'EOF'
import io, runpy, sys, urllib.request
generator, default, target = sys.argv[1:4]
class Download(io.BytesIO):
    def getcode(self):
        return 200
with open(default, "rb") as f:
    content = f.read()
urllib.request.urlopen = lambda url, *args, **kwargs: Download(content)
sys.argv = [generator, "--force", "--target", target]
runpy.run_path(generator, run_name="__main__")
EOF
  )
  "$python" - "$work/$name.json" "$work/$name-storage" "$with_plugin" "$plugin" "$repo/transfers_plugin/plugin.py" <<'EOF'
import json, sys
path, storage, with_plugin, plugin, script = sys.argv[1:6]
with open(path) as f:
    config = json.load(f)
config["StorageDirectory"] = config["IndexDirectory"] = storage
if with_plugin == "yes":
    config["Plugins"] = [plugin]
    config["PythonScript"] = script
    config["PythonVerbose"] = False
with open(path, "w") as f:
    json.dump(config, f, indent=1, sort_keys=True)
EOF
}

start_orthanc() {
  local name="$1"
  "$orthanc" "$work/$name.json" > "$work/$name.log" 2>&1 &
  pid=$!
  for _ in $(seq 300); do
    if curl -sf -u alice:orthanctest http://127.0.0.1:8042/system >/dev/null; then return 0; fi
    kill -0 "$pid" 2>/dev/null || { tail -30 "$work/$name.log" >&2; exit 1; }
    sleep 0.2
  done
  echo "Orthanc did not answer on 8042 (log: $work/$name.log)" >&2; exit 1
}

# run NAME WITH_PLUGIN SCRIPT [ARGS]: one upstream Run.py against a fresh Orthanc; prints its summary
run() {
  local name="$1" with_plugin="$2" script="$3"; shift 3
  configure "$name" "$with_plugin"
  start_orthanc "$name"
  echo "== $name: $script (Orthanc $(curl -s -u alice:orthanctest http://127.0.0.1:8042/system | "$python" -c \
'import json,sys; print(json.load(sys.stdin)["Version"])'), $([ "$with_plugin" = yes ] && echo "with $plugin and this plugin" || echo "without plugins"))"
  (cd "$checkout" && "$python" "$script" --force "$@" "${extra[@]}") > "$work/$name.out" 2>&1 || true
  stop_orthanc
  "$python" - "$work/$name.out" <<'EOF'
import re, sys
text = open(sys.argv[1], errors="replace").read()
ran = re.search(r"^Ran (\d+) tests?", text, re.M)
if not ran:
    print(text[-3000:]); print("no unittest summary"); sys.exit(2)
counts = dict((k, int(v)) for k, v in re.findall(r"(failures|errors|skipped|expected failures|unexpected successes)=(\d+)",
                                               text.split(ran.group(0))[-1]))
bad = counts.get("failures", 0) + counts.get("errors", 0)
passed = int(ran.group(1)) - bad - counts.get("skipped", 0) - counts.get("expected failures", 0)
print(f"ran {ran.group(1)}, passed {passed}, failures {counts.get('failures', 0)}, errors {counts.get('errors', 0)}, "
      f"skipped {counts.get('skipped', 0)}")
with open(sys.argv[1] + ".failed", "w") as f:  # the tests that did not pass, one a line
    f.writelines(f"{kind}: {test}\n" for kind, test in sorted(re.findall(r"^(FAIL|ERROR): (\S+)", text, re.M)))
if int(ran.group(1)) <= 10:
    for kind, test in re.findall(r"^(FAIL|ERROR): (\S+)", text, re.M):
        print(f"  {kind}: {test}")
sys.exit(1 if bad else 0)
EOF
  local status=$?
  echo "   (output: $work/$name.out, tests not passed: $work/$name.out.failed, Orthanc log: $work/$name.log)"
  return $status
}

# Exit status: 0 when the transfers tests all pass; for the core tests, 0 when they ran (their failures are
# the baseline's), and with "all" only if no core test has a result that differs with the plugin.
status=0
case "$suite" in
  transfers) run transfers yes Plugins/Transfers/Run.py || status=$? ;;
  core) run core yes Tests/Run.py --orthanc "$orthanc" || [ $? -le 1 ] || status=1 ;;
  core-bare) run core-bare no Tests/Run.py --orthanc "$orthanc" || [ $? -le 1 ] || status=1 ;;
  all)
    run transfers yes Plugins/Transfers/Run.py || status=1
    run core yes Tests/Run.py --orthanc "$orthanc" || [ $? -le 1 ] || status=1
    run core-bare no Tests/Run.py --orthanc "$orthanc" || [ $? -le 1 ] || status=1
    echo "== core tests whose result differs with the plugin (< without, > with):"
    if diff "$work/core-bare.out.failed" "$work/core.out.failed"; then
      echo "   none"
    else
      status=1
    fi ;;
esac
exit "$status"
