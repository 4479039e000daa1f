"""The references that the Python plugin 4.0 (Debian 12) leaks on every REST callback, measured and given back.

Its ``RestCallbackHandler`` builds the callback's keyword arguments with ``PyDict_SetItemString``, which does
not steal references, after creating each value with a new one: the method, the groups tuple, the ``get``
and ``headers`` dictionaries and each of their values, and the body each keep one reference that nothing
ever releases (fixed in plugin 4.1). Every request body of every POST and PUT stays in memory for good: a
push receiver keeps every bucket it received, a 100 MB body refused at once still costs 100 MB.

This module measures, on a request made to a probe route at start, whether each argument has exactly one
reference more than what holds it; only when every measured argument has, the callbacks give that one
reference back (``Py_DecRef``) once they are done with the request. Any other result leaves everything as
it is, so that a plugin that does not leak (4.1 and later) is never given a reference it did not take.
"""

import ctypes
import sys
from typing import Any, Callable, Dict, Iterator, List, Mapping, Optional, Tuple

# The keyword arguments of a REST callback, and those whose values are containers of leaked values.
SCALARS = ("method", "groups", "body")
CONTAINERS = ("get", "headers")
# The measured arguments that must all leak before anything is given back.
REQUIRED = ("method", "groups", "body", "headers")


def locations(request: Mapping[str, Any]) -> Iterator[Tuple[str, Any, Any]]:
    """Every argument of a callback as (kind, container, key), the container holding it."""
    for key in SCALARS:
        if key in request:
            yield key, request, key
    for key in CONTAINERS:
        if isinstance(request.get(key), dict):
            yield key, request, key  # before the loop below holds it: its measure counts no extra reference
            values = request[key]
            for name in list(values):
                yield f"{key} values", values, name
            del values


def _measurable(value: Any) -> bool:
    """Objects that only this request references (not a shared cached one: empty, one character)."""
    if isinstance(value, (str, bytes)):
        return len(value) > 1
    if isinstance(value, tuple):
        return len(value) > 0
    return isinstance(value, dict)


def extra_references(request: Mapping[str, Any], getrefcount: Callable[[Any], int] = sys.getrefcount
                     ) -> Dict[str, List[int]]:
    """For each kind of argument, how many references each of its objects has beyond its container's,
    compared with a fresh object held the same way (``request`` is the callback's own copy of its keyword
    arguments, with nothing else holding them)."""
    control = {"value": bytes(bytearray(b"control"))}
    baseline = getrefcount(control["value"])
    extra: Dict[str, List[int]] = {}
    for kind, container, key in locations(request):
        if _measurable(container[key]):
            extra.setdefault(kind, []).append(getrefcount(container[key]) - baseline)
    return extra


def verdict(extra: Mapping[str, List[int]]) -> Optional[bool]:
    """True when every measured argument leaks one reference (and the main ones were measured), False when
    none leaks, None when the measure is anything else (then nothing is given back)."""
    counts = {n for values in extra.values() for n in values}
    if counts == {0}:
        return False
    if counts == {1} and all(kind in extra for kind in REQUIRED):
        return True
    return None


def _py_decref() -> Callable[[Any], None]:
    decref = ctypes.pythonapi.Py_DecRef
    decref.argtypes = [ctypes.py_object]
    decref.restype = None
    return decref


class LeakCompensation:
    """Gives back, after each callback, the one reference per argument that the SDK leaked (when measured)."""

    def __init__(self, decref: Optional[Callable[[Any], None]] = None):
        self._decref = decref
        self.active = False

    def enable(self) -> None:
        if self._decref is None:
            self._decref = _py_decref()
        self.active = True

    def release(self, request: Dict[str, Any]) -> None:
        """Called once per callback, after the request is handled, with the callback's keyword arguments."""
        if not self.active:
            return
        for _kind, container, key in list(locations(request)):
            self._decref(container[key])
