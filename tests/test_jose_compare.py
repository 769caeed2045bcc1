"""scripts/jose_compare.py measures both JOSE libraries on the same, interoperable work."""

from __future__ import annotations

import importlib.util
from pathlib import Path

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "jose_compare.py"


def test_both_libraries_are_measured_on_each_operation_next_to_the_floor():
    spec = importlib.util.spec_from_file_location("jose_compare", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    result = module.compare(iterations=3)  # its asserts check each library opens the other's tokens
    assert set(result["us_per_call"]) == {"open", "sign", "seal"}
    for row in result["us_per_call"].values():
        assert row["jwcrypto"] > 0 and row["joserfc"] > 0 and row["floor"] > 0
