"""The layering written down in ARCHITECTURE.md holds: every import in src/converge (function-level ones
included) goes to a lower layer, or within its own package; and no two parts of the package (top-level
modules and subpackages) import each other, directly or through others."""

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
    """The part a table entry or a module belongs to: its top-level module or subpackage (`tune.search` and
    `tune.export` are both `tune`)."""
    parts = prefix.split(".")
    return parts[1] if len(parts) > 1 else parts[0]


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
    sideways.write_text("from converge.choose.auto import choose_hyperparameters\n")
    assert violations("converge.doctor.bad", sideways) and not violations("converge.choose.bad", sideways)


def part_graph(sources: list[Path]) -> dict[str, set[str]]:
    """{part: the other parts it imports}, over every import of ``sources`` (function-level ones too)."""
    graph: dict[str, set[str]] = {}
    for path in sources:
        source = package_of(module_name(path))
        targets = {package_of(target) for _, target in imports(path)} - {source}
        graph.setdefault(source, set()).update(targets)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The groups of parts that reach each other through imports (strongly connected, more than one part)."""
    reach = {}
    for start in graph:
        seen, todo = set(), [start]
        while todo:
            for nxt in graph.get(todo.pop(), ()):
                if nxt not in seen:
                    seen.add(nxt)
                    todo.append(nxt)
        reach[start] = seen
    groups = {tuple(sorted({a} | {b for b in reach[a] if a in reach.get(b, ())})) for a in graph}
    return sorted(list(g) for g in groups if len(g) > 1)


def test_no_two_parts_import_each_other():
    found = cycles(part_graph(SOURCES))
    assert not found, f"parts that import each other: {found}"


def test_the_cycle_check_can_fail():
    assert cycles({"assembly": {"choose"}, "choose": {"engine"}, "engine": {"assembly"}, "io": set()}) == \
        [["assembly", "choose", "engine"]]
    assert cycles({"tune": {"assembly"}, "assembly": {"choose"}, "choose": set()}) == []


def test_config_knows_every_optimizer_the_engine_builds():
    """`config` checks optimizer names without importing the engine: the two lists must stay one."""
    from converge.config import OPTIMIZER_NAMES
    from converge.engine.optim import OPTIMIZERS

    assert tuple(OPTIMIZERS) == OPTIMIZER_NAMES
