"""Reuse the functions a learner built in an earlier notebook, instead of writing them out again.

`from_notebook("01_rmsnorm.ipynb", "rms_norm")` reads that notebook (beside the current one, or in a
sibling folder as nbgrader lays out assignments), runs only its imports and its top-level `def` and
`class` statements, and returns the named functions. A function still holding an exercise stub, or
a notebook that cannot be found, is replaced by the package's equivalent, and the notebook says so.
"""

from __future__ import annotations

import ast
import json
from pathlib import Path

import torch

from ..attention import eager_attention, repeat_kv
from ..rmsnorm import GemmaRMSNorm
from ..rope import GemmaRotaryEmbedding, apply_rotary_pos_emb
from .nbgrader_format import source

STUB_MARK = "raise NotImplementedError()"  # what a student copy holds where a solution was


def _package_rms_norm(x, weight, eps=1e-6):
    norm = GemmaRMSNorm(x.shape[-1], eps).to(device=x.device, dtype=weight.dtype)
    with torch.no_grad():
        norm.weight.copy_(weight)
        return norm(x)


def _package_rope_tables(position_ids, d, base=10000.0):
    return GemmaRotaryEmbedding(d, base)(torch.zeros(()), position_ids)


def _package_attention(query, key, value, mask=None):
    return eager_attention(query, key, value, mask, query.shape[-1] ** -0.5)


PACKAGE_EQUIVALENTS = {
    "rms_norm": _package_rms_norm,
    "rope_tables": _package_rope_tables,
    "apply_rope": lambda x, cos, sin: apply_rotary_pos_emb(x, x, cos, sin)[0],
    "attention": _package_attention,
    "repeat_kv_by_index": repeat_kv,
}


def find_notebook(name: str) -> Path | None:
    """`name` in the current folder, else in a sibling folder (nbgrader: one folder per assignment)."""
    here = Path.cwd() / name
    if here.is_file():
        return here
    return next(iter(sorted(Path.cwd().parent.glob(f"*/{name}"))), None)


def _definitions(path: Path) -> tuple[dict, dict]:
    """Run the notebook's imports and top-level def/class statements; return (namespace, source of each def)."""
    namespace, sources = {"__name__": f"notebook_{path.stem}"}, {}
    cells = json.loads(path.read_text())["cells"]
    for cell in cells:
        if cell["cell_type"] != "code":
            continue
        text = "\n".join(line for line in source(cell).split("\n") if not line.lstrip().startswith(("%", "!")))
        try:
            tree = ast.parse(text)
        except SyntaxError:
            continue  # a cell the learner left half-written: its definitions are not usable
        kept = [node for node in tree.body if isinstance(node, (ast.Import, ast.ImportFrom, ast.FunctionDef,
                                                                ast.ClassDef))]
        for node in kept:
            try:  # one statement at a time: an import that fails there only loses what depends on it
                exec(compile(ast.Module([node], type_ignores=[]), path.name, "exec"), namespace)
            except Exception:
                continue
            if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
                sources[node.name] = ast.get_source_segment(text, node) or ""
    return namespace, sources


def from_notebook(notebook: str, *names: str):
    """The functions `names` as notebook `notebook` defines them (one value, or a tuple for several names)."""
    path = find_notebook(notebook)
    namespace, sources = _definitions(path) if path else ({}, {})
    found = []
    for name in names:
        if name in namespace and STUB_MARK not in sources.get(name, ""):
            found.append(namespace[name])
            print(f"{name}: from {notebook}")
            continue
        if name not in PACKAGE_EQUIVALENTS:
            raise ValueError(f"{name} is not defined in {notebook} and has no package equivalent")
        reason = "not found" if path is None else ("still an exercise stub" if name in namespace
                                                   else "does not define it")
        found.append(PACKAGE_EQUIVALENTS[name])
        print(f"{name}: the package's version ({notebook}: {reason})")
    return found[0] if len(found) == 1 else tuple(found)
