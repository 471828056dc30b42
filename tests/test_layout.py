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


# the stream argument's place in each function that takes one: (position, keyword)
_STREAM_ARG = {"sampling": 2, "stream_seed": 1, "respond": 6, "judge_items": 5, "create_prompts": 5}


def _stream_args(sources):
    """(file, line, the stream argument's node) of every call, in sources ((name, text) pairs), of a
    function that takes a random stream's name."""
    for path, text in sources:
        for node in ast.walk(ast.parse(text)):
            if not isinstance(node, ast.Call):
                continue
            name = getattr(node.func, "attr", getattr(node.func, "id", None))
            if name not in _STREAM_ARG:
                continue
            kw = [k.value for k in node.keywords if k.arg == "stream"]
            pos = node.args[_STREAM_ARG[name]] if len(node.args) > _STREAM_ARG[name] else None
            yield os.path.basename(path), node.lineno, kw[0] if kw else pos


def test_random_streams_are_named_in_one_place():
    """A stream's name is its seed, so every call takes it from evaluation.py's names (EVAL_STREAMS,
    round_stream, mtbench_stream), never from a literal written at the call: a typo there would draw other
    numbers, or share another stage's, and no fingerprint would notice."""
    import evaluation as E

    def literal(sources):
        return [(f, line) for f, line, arg in _stream_args(sources) if isinstance(arg, (ast.Constant, ast.JoinedStr))]

    product = [(p, open(p, encoding="utf-8").read()) for p in PRODUCT]
    assert len(list(_stream_args(product))) >= 10  # the finder sees the calls (sampling's in 3 files)
    assert not literal(product), literal(product)
    bad = 'E.sampling(cfg, 0.7, "eval responses")\nrespond(m, t, c, p, 1, 0.7, stream=f"iter{t} x", what="")'
    assert literal([("bad.py", bad)]) == [("bad.py", 1), ("bad.py", 2)]  # and it would see a literal
    # Pinned: these names are the seeds of every run dir's draws; renaming one changes its artifacts.
    assert E.round_stream(2, "candidates") == "iter2 candidates" and E.EVAL_STREAMS["responses"] == "eval responses"
    with pytest.raises(ValueError, match="no round stream"):
        E.round_stream(1, "candidate")
