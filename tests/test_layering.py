"""No tfnas module imports one above it in the order of docs/DEVELOPING.md."""

import ast
import pathlib
import re

REPO = pathlib.Path(__file__).resolve().parents[1]


def documented_order() -> list:
    text = (REPO / "docs" / "DEVELOPING.md").read_text()
    block = re.search(r"## Import order.*?```text\n(.*?)```", text, re.S)
    assert block, "docs/DEVELOPING.md has no '## Import order' text block"
    return [line.strip() for line in block.group(1).splitlines() if line.strip()]


def module_name(path: pathlib.Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def tfnas_imports(path: pathlib.Path) -> set:
    """Every tfnas module ``path`` imports, function-local imports included."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module == "tfnas":   # from tfnas import genotypes
                found |= {f"tfnas.{a.name}" for a in node.names}
            elif node.module.startswith("tfnas."):
                found.add(node.module)
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name == "tfnas" or a.name.startswith("tfnas.")}
    return found


def test_every_module_is_in_the_documented_order():
    order = documented_order()
    modules = {module_name(p) for p in (REPO / "tfnas").rglob("*.py")}
    assert sorted(modules - set(order)) == [], "add these modules to docs/DEVELOPING.md"
    assert sorted(set(order) - modules) == [], "docs/DEVELOPING.md lists modules that do not exist"
    assert len(order) == len(set(order))


def test_no_module_imports_one_above_it():
    rank = {name: i for i, name in enumerate(documented_order())}
    upward = []
    for path in sorted((REPO / "tfnas").rglob("*.py")):
        importer = module_name(path)
        for imported in tfnas_imports(path):
            if imported not in rank:   # e.g. "from tfnas import __version__"
                continue
            if rank[imported] >= rank[importer]:
                upward.append(f"{importer} imports {imported}")
    assert upward == []


def test_the_checker_sees_upward_and_local_imports(tmp_path):
    # The test above must be able to fail: a function-local upward import is seen.
    source = tmp_path / "m.py"
    source.write_text("def f():\n    from tfnas.training import train\n    import tfnas.cli.search\n"
                      "from tfnas import genotypes\n")
    assert tfnas_imports(source) == {"tfnas.training", "tfnas.cli.search", "tfnas.genotypes"}
