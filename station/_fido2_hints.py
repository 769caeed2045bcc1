"""A speed-up for python-fido2, applied once when the station package is imported.

python-fido2 (2.2) builds every CTAP response (getInfo, attestation, assertion, ...) as a
dataclass and calls `typing.get_type_hints()` on the class each time (fido2.utils
_DataClassMapping.__post_init__ and _parse_from_dict). Evaluating a class's annotations again
on every response was the largest single cost of the station's CPU per item (measured with
`station bench`). A class's type hints never change, so they are memoized here; calls with
extra arguments go to typing unchanged.
"""

from __future__ import annotations

import functools
import typing

import fido2.utils

_original = typing.get_type_hints


@functools.lru_cache(maxsize=512)
def _cached(obj):
    return _original(obj)


def get_type_hints(obj, *args, **kwargs):
    if args or kwargs:
        return _original(obj, *args, **kwargs)
    try:
        return _cached(obj)
    except TypeError:  # an unhashable object: nothing to memoize
        return _original(obj)


fido2.utils.get_type_hints = get_type_hints
