"""Transfers accelerator for Orthanc, written as an Orthanc Python plugin.

Every module of this package except ``orthanc_api`` and ``plugin`` is importable without Orthanc.
"""

__version__ = "0.1.0"
PLUGIN_NAME = "transfers"
