"""The code stays readable: no function over 80 lines, a docstring atop every file, model.py alone.

    python -m pytest tests/test_layout.py -q
"""

import ast
import subprocess
import sys

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
