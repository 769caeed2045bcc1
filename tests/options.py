"""The sample WebAuthn options of fixtures/options, as tests use them."""

from __future__ import annotations

import json
from pathlib import Path

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"


def graph_creation_options() -> dict:
    """fixtures/options/graph.json as a WebAuthn JSON dict (Graph's @odata.type keys dropped)."""

    def strip(value):
        if isinstance(value, dict):
            return {k: strip(v) for k, v in value.items() if k != "@odata.type"}
        if isinstance(value, list):
            return [strip(v) for v in value]
        return value

    return strip(json.loads((FIXTURES / "options" / "graph.json").read_text()))
