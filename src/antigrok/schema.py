"""The defaults of the workflow's configuration: workflow/schemas/config.schema.yaml is their one
home. Code that runs without a validated config (the dataclasses of settings, the monitor, tests)
takes its defaults from here, so a default is changed in the schema only. Imports only PyYAML.
"""

from __future__ import annotations

import copy
from functools import lru_cache
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]
SCHEMA = REPO / "workflow" / "schemas" / "config.schema.yaml"


def read_yaml(path: str | Path) -> dict:
    return yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}


@lru_cache(maxsize=None)
def _schema() -> dict:
    return read_yaml(SCHEMA)


def _defaults_of(node: dict) -> dict:
    """The defaults of an object's properties, nested objects with defaults included."""
    found = {}
    for key, prop in node.get("properties", {}).items():
        if "properties" in prop and "default" in prop:
            found[key] = {**copy.deepcopy(prop["default"]), **_defaults_of(prop)}
        elif "default" in prop:
            found[key] = copy.deepcopy(prop["default"])
    return found


def section_defaults(section: str) -> dict:
    """The schema's defaults of one top-level config section (``phases``, ``detector``, ...): what
    ``snakemake.utils.validate`` fills into a config that leaves the section out."""
    node = _schema()["properties"][section]
    if "properties" not in node:
        raise KeyError(f"the config section {section!r} has no properties with defaults in {SCHEMA}")
    return _defaults_of(node)
