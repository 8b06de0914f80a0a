"""The product and the lab live apart: the library never imports the dev tools, scripts/ holds only what
a user runs, and nothing points outside the repository."""
import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
USER_SCRIPTS = {"setup.sh", "r1_gpu.sh", "heal_mla.py"}


def _imports(path: Path) -> set[str]:
    out = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            out.add(node.module.split(".")[0])
    return out


def test_library_imports_no_dev_tool_or_script():
    bad = [(str(p.relative_to(ROOT)), m) for p in (ROOT / "grpo").rglob("*.py")
           for m in _imports(p) & {"tools", "scripts"}]
    assert not bad, bad


def test_scripts_holds_only_user_entry_points():
    assert {p.name for p in (ROOT / "scripts").iterdir() if p.name != "__pycache__"} == USER_SCRIPTS


def test_every_tool_says_how_to_run_it():
    for p in sorted((ROOT / "tools").iterdir()):
        if p.suffix == ".py":
            doc = ast.get_docstring(ast.parse(p.read_text())) or ""
        elif p.suffix == ".sh":
            doc = "".join(ln for ln in p.read_text().splitlines(keepends=True) if ln.startswith("#"))
        else:
            continue
        assert re.search(r"(python3?|bash) tools/\w+\.(py|sh)", doc), f"{p.name}: its docstring gives no command"


def test_nothing_points_outside_the_repository():
    pattern = re.compile(r"\.\./shared|/work/shared")
    files = [p for d in ("grpo", "scripts", "tools", "recipes", "docs", "tests") for p in (ROOT / d).rglob("*")
             if p.is_file() and p.suffix in (".py", ".sh", ".yaml", ".md")] + [ROOT / "README.md", ROOT / "Makefile"]
    bad = [str(p.relative_to(ROOT)) for p in files if p != Path(__file__) and pattern.search(p.read_text())]
    assert not bad, bad
