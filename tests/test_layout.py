"""The code stays readable: no function over 80 lines, a docstring atop every file, model.py alone, the root
holds what a user runs and the library is a package that installs.

    python -m pytest tests/test_layout.py -q
"""

import ast
import os
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
