"""The code stays readable: no function over 80 lines, a docstring atop every file, model.py alone, the root
holds what a user runs and the library is a package that installs.

    python -m pytest tests/test_layout.py -q
"""

import ast
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO_ROOT

SOURCES = sorted(p for p in REPO_ROOT.rglob("*.py") if ".git" not in p.parts and "tests" not in p.parts
                 and not any(part.startswith(".") or part in ("build", "wandb") for part in p.relative_to(REPO_ROOT).parts))


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(REPO_ROOT)))
def test_functions_are_short_and_files_say_what_they_are(path):
    tree = ast.parse(path.read_text(encoding="utf-8"))
    assert ast.get_docstring(tree), f"{path.name} has no docstring saying what it is for and how to run it"
    long = [f"{node.name} ({node.end_lineno - node.lineno + 1} lines)" for node in ast.walk(tree)
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno + 1 > 80]
    assert not long, f"{path.name}: {', '.join(long)}"


def test_model_py_imports_nothing_from_the_project():
    """model.py can be copied alone into another codebase."""
    ours = {"smallgpt", *(p.stem for p in SOURCES if p.parent == REPO_ROOT)}  # the package and the root's programs
    code = f"import model, sys; print(sorted(m for m in sys.modules if m.split('.')[0] in {sorted(ours)!r}))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO_ROOT)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "['model']"


def test_the_root_holds_what_a_user_runs_and_nothing_edits_sys_path():
    root_programs = sorted(p.name for p in REPO_ROOT.glob("*.py"))
    assert len(root_programs) <= 6 and "model.py" in root_programs, root_programs
    editing = [str(p.relative_to(REPO_ROOT)) for p in REPO_ROOT.rglob("*.py") if ".git" not in p.parts
               and p != REPO_ROOT / "tests" / "conftest.py" and "sys.path" in p.read_text(encoding="utf-8")
               and p != Path(__file__)]
    assert not editing, f"{editing} edit sys.path: import from the installed package instead (pip install -e .)"


def test_the_package_and_model_import_from_any_folder(tmp_path):
    """After `pip install -e .`, another project imports the library and model.py."""
    code = "import model, smallgpt, smallgpt.cli, smallgpt.interop.hf; print(model.__file__); print(smallgpt.__file__)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path,
                            env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"})
    assert result.returncode == 0, f"{result.stderr.strip().splitlines()[-1:]}: run pip install -e . first"
    assert all(Path(line).is_relative_to(REPO_ROOT) for line in result.stdout.split()), result.stdout


# Measurements live in docs/results.md with their machine, date and commit; code keeps the why.
MACHINE_WORDS = re.compile(r"\b20\d\d-\d\d-\d\d\b|\bEPYC\b|\bXeon\b|\bZen ?\d\b|\bRyzen\b|\bCore i\d\b|\bSapphire Rapids\b|"
                           r"\bIntel\b|\bAMD\b|\bApple M\d\b")


def test_no_python_file_quotes_a_date_or_a_cpu_model():
    found = [f"{p.relative_to(REPO_ROOT)}:{i}: {line.strip()[:80]}" for p in [*SOURCES, *REPO_ROOT.glob("tests/*.py")]
             if p != Path(__file__) for i, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1)
             if MACHINE_WORDS.search(line)]
    assert not found, "measurements go to docs/results.md, not code:\n" + "\n".join(found)


def test_config_headers_are_short_and_the_readme_a_guide():
    for path in sorted((REPO_ROOT / "config").glob("*.toml")):
        lines = path.read_text(encoding="utf-8").splitlines()
        header = next((i for i, line in enumerate(lines) if line.strip() and not line.startswith("#")), len(lines))
        assert sum(line.startswith("#") for line in lines[:header]) <= 12, f"{path.name}: a header of at most 12 lines"
    readme = (REPO_ROOT / "README.md").read_text(encoding="utf-8")
    assert len(readme) <= 20_000, f"README.md has {len(readme):,} characters: depth goes to docs/"
    links = re.findall(r"\]\(((?:docs/)?[\w./-]+\.md)(?:#[\w-]+)?\)", readme)
    assert links and all((REPO_ROOT / link).is_file() for link in links), links
