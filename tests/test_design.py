"""DESIGN.md cannot drift from the code: its floors are the import-linter layers contract, in order, and
its map names every module of the package, and only modules that exist."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DESIGN = ROOT / "DESIGN.md"


def _section(title: str) -> str:
    text = DESIGN.read_text()
    match = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## |\Z)", text, flags=re.M | re.S)
    assert match, f"DESIGN.md has no section '## {title}'"
    return match.group(1)


def test_the_floors_are_the_layers_contract_in_order() -> None:
    block = re.search(r"```text\n(.*?)```", _section("Floors"), flags=re.S)
    assert block, "the Floors section opens with a ```text block, one floor per line"
    floors = [line.split("#")[0].strip() for line in block.group(1).splitlines()]
    floors = [floor for floor in floors if floor]
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    contracts = config["tool"]["importlinter"]["contracts"]
    (layers,) = [contract["layers"] for contract in contracts if contract["type"] == "layers"]
    assert floors == [" | ".join(part.strip() for part in layer.split("|")) for layer in layers]


def test_the_map_names_every_module_and_only_modules_that_exist() -> None:
    package = ROOT / "reconciler"
    modules = {
        str(path.relative_to(package))
        for path in package.rglob("*.py")
        if path.name not in {"__init__.py", "__main__.py"} and "__pycache__" not in path.parts
    }
    named = set(re.findall(r"^\| [^|]*\| `([\w/]+\.py)`", _section("The map"), flags=re.M))
    assert sorted(modules - named) == [], "modules missing from DESIGN.md's map"
    assert sorted(named - modules) == [], "DESIGN.md's map names modules that do not exist"
