"""What Orthanc's ``PythonScript`` option points at: ``"PythonScript": "/path/to/transfers_plugin/plugin.py"``.

Works from a checkout and from a pip installation alike: the folder holding the package goes first on
``sys.path``, and this script's own folder is taken off it so that no module of the package can shadow a
standard module.
"""

import os
import sys

_HERE = os.path.dirname(os.path.abspath(__file__))
_ROOT = os.path.dirname(_HERE)
sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != _HERE]
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

from transfers_plugin.app import start  # noqa: E402
from transfers_plugin.orthanc_api import OrthancApi  # noqa: E402

APPLICATION = start(OrthancApi())
