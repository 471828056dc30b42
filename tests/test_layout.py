"""The shape the code promises its readers: model.py and the DPO losses can be lifted out whole (what they
import is checked here, not just said), and no product file or function outgrows one sitting."""
import ast
import builtins
import glob
import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PRODUCT = sorted(glob.glob(os.path.join(ROOT, "*.py")))
PROJECT = {os.path.basename(p)[:-3] for p in PRODUCT} | {"tools", "bench", "tests"}


def _tree(name):
    with open(os.path.join(ROOT, name), encoding="utf-8") as f:
        return ast.parse(f.read())


def _imported(tree) -> set[str]:
    """Every top-level module name imported anywhere in the file, lazily inside functions too."""
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            names.add((node.module or "").split(".")[0] if node.level == 0 else ".")
    return names


def test_model_py_imports_torch_and_the_stdlib_only():
    imported = _imported(_tree("model.py"))
    assert not imported & PROJECT and "." not in imported, imported & PROJECT
    assert imported - set(sys.stdlib_module_names) == {"torch"}


def test_dpo_losses_use_torch_alone():
    """token_logps, sequence_logps, dpo_loss, sft_loss and lr_at read no name of dpo.py but torch, F,
    math, builtins and each other: each can be copied out with `import torch` (and F, math) alone."""
    losses = {"token_logps", "sequence_logps", "dpo_loss", "sft_loss", "lr_at"}
    allowed = losses | {"torch", "F", "math"} | set(dir(builtins))
    funcs = {n.name: n for n in _tree("dpo.py").body if isinstance(n, ast.FunctionDef) and n.name in losses}
    assert set(funcs) == losses
    for name, fn in funcs.items():
        local = {a.arg for a in ast.walk(fn.args) if isinstance(a, ast.arg)}
        local |= {n.id for n in ast.walk(fn) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store)}
        free = {n.id for n in ast.walk(fn) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load)} - local
        assert free <= allowed, (name, free - allowed)
    # and those names are what dpo.py imports them as: torch itself, torch.nn.functional, the stdlib's math
    aliases = {(a.asname or a.name) for n in _tree("dpo.py").body if isinstance(n, ast.Import) for a in n.names}
    assert {"torch", "math", "F"} <= aliases


@pytest.mark.parametrize("path", PRODUCT, ids=os.path.basename)
def test_product_files_and_functions_stay_readable(path):
    with open(path, encoding="utf-8") as f:
        src = f.read()
    assert len(src.splitlines()) <= 600, f"{path}: {len(src.splitlines())} lines"
    longest = max(((n.end_lineno - n.lineno + 1, n.name) for n in ast.walk(ast.parse(src))
                   if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))), default=(0, ""))
    assert longest[0] < 80, f"{path}: {longest[1]} has {longest[0]} lines"


@pytest.mark.parametrize("path", PRODUCT, ids=os.path.basename)
def test_every_product_file_says_what_it_imports(path):
    tree = ast.parse(open(path, encoding="utf-8").read())
    doc = ast.get_docstring(tree) or ""
    project = _imported(tree) & PROJECT - {os.path.basename(path)[:-3]}
    assert "Imports" in doc, f"{path}: the docstring does not say what the file imports"
    missing = [m for m in project if m not in doc and f"{m}.py" not in doc]
    assert not missing, f"{path}: imports {missing} without saying so in its docstring"
