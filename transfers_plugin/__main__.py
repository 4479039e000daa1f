"""``python3 -m transfers_plugin``: where this installation's plugin script is, for Orthanc's configuration.

Prints the path to give Orthanc's ``PythonScript`` option (nothing else, so that it fits in ``$(...)``);
``--config`` prints a configuration fragment with that path and the Python plugin's library instead.
Runs without Orthanc: it imports nothing that needs the ``orthanc`` module.
"""

import argparse
import glob
import json
import os
import sys

from transfers_plugin import __version__

PLUGIN_SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "plugin.py")
# Where Debian's orthanc-python and the orthancteam images put the Python plugin's library.
_LIBRARY_PATTERNS = ("/usr/lib/orthanc/libOrthancPython.so*", "/usr/share/orthanc/plugins/libOrthancPython.so*",
                     "/usr/share/orthanc/plugins-available/libOrthancPython.so*")


def python_plugin_library() -> str:
    for pattern in _LIBRARY_PATTERNS:
        found = sorted(glob.glob(pattern))
        if found:
            return found[0]
    return "/usr/lib/orthanc/libOrthancPython.so"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="python3 -m transfers_plugin",
        description=f"Transfers accelerator {__version__} for Orthanc (Python plugin): prints the path to give "
                    "Orthanc's PythonScript option.")
    parser.add_argument("--config", action="store_true",
                        help="print a JSON fragment of Orthanc's configuration (Plugins and PythonScript)")
    args = parser.parse_args(argv)
    if args.config:
        json.dump({"Plugins": [python_plugin_library()], "PythonScript": PLUGIN_SCRIPT}, sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        print(PLUGIN_SCRIPT)
    return 0


if __name__ == "__main__":
    sys.exit(main())
