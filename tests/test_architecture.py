"""The layering written down in ARCHITECTURE.md holds: every import in src/converge (function-level ones
included) goes to a lower layer, or to the same layer within the same package."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "src" / "converge"


def layer_table() -> dict[str, int]:
    """{module prefix: layer} from ARCHITECTURE.md's table (rows like "| 3 | `config`, `engine` | ... |")."""
    table = {}
    for line in (ROOT / "ARCHITECTURE.md").read_text().splitlines():
        match = re.match(r"\|\s*(\d+)\s*\|([^|]*)\|", line)
        if match:
            for name in re.findall(r"`([\w.]+)`", match.group(2)):
                table["converge" if name == "converge" else f"converge.{name}"] = int(match.group(1))
    return table


LAYERS = layer_table()


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def layer_of(module: str) -> tuple[int, str]:
    """(layer, the table entry it falls under): the longest matching prefix."""
    matches = [prefix for prefix in LAYERS if module == prefix or module.startswith(prefix + ".")]
    assert matches, f"{module} is in no layer of ARCHITECTURE.md"
    prefix = max(matches, key=len)
    return LAYERS[prefix], prefix


def package_of(prefix: str) -> str:
    """The package a table entry belongs to: `tune.auto` and `tune.search` share `tune`; `config` sits with
    the engine, whose layer it shares."""
    name = prefix.split(".")[1] if "." in prefix else prefix
    return {"config": "engine"}.get(name, name)


def imports(path: Path) -> list[tuple[int, str]]:
    """(line, module) for every converge import; `from converge.x import y` counts as converge.x.y when
    that is a module."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "converge":
            for alias in node.names:
                candidate = f"{node.module}.{alias.name}"
                is_module = (PACKAGE.parent / Path(*candidate.split("."))).with_suffix(".py").exists() or \
                    (PACKAGE.parent / Path(*candidate.split("."))).is_dir()
                found.append((node.lineno, candidate if is_module else node.module))
        elif isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names if alias.name.split(".")[0] == "converge"]
    return found


SOURCES = sorted(PACKAGE.rglob("*.py"))


def test_the_table_covers_every_module():
    assert len(LAYERS) >= 20
    for path in SOURCES:
        layer_of(module_name(path))


def violations(source: str, path: Path) -> list[str]:
    layer, prefix = layer_of(source)
    wrong = []
    for line, target in imports(path):
        target_layer, target_prefix = layer_of(target)
        same_package = package_of(target_prefix) == package_of(prefix)
        if target_layer > layer or (target_layer == layer and not same_package):
            wrong.append(f"line {line}: {source} (layer {layer}) imports {target} (layer {target_layer})")
    return wrong


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_imports_go_down_the_layers(path):
    wrong = violations(module_name(path), path)
    assert not wrong, "\n".join(wrong)


def test_the_rule_catches_wrong_imports(tmp_path):
    """The check can fail: the engine importing the doctor or the API (upwards, also inside a function), and
    two packages of one layer importing each other, are all reported."""
    bad = tmp_path / "bad.py"
    bad.write_text("from converge.doctor import run\n\ndef later():\n    import converge.api\n")
    assert len(violations("converge.engine.bad", bad)) == 2
    sideways = tmp_path / "sideways.py"
    sideways.write_text("from converge.tune.auto import choose_hyperparameters\n")
    assert violations("converge.doctor.bad", sideways) and not violations("converge.tune.bad", sideways)
