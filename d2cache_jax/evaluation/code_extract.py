"""Turning a model's text into a program: code fences, and HumanEval's sanitize step.

`sanitize` keeps what the entry point needs, as upstream's HumanEval filter does: the longest span of
lines that parses, then the imports plus the classes, assignments and functions (those that return
something) that the entry point reaches through the names they use; names the tests call (helpers
defined in the prompt, such as HumanEval/50's `encode_shift`) are kept as well.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterable

_FENCE = "```"
_SPAN_SEARCH_LINES = 100  # the quadratic search for a parsable span looks at this many lines


def first_code_block(text: str) -> str | None:
    """The body of the first fenced block (any language tag), or None."""
    match = re.search(r"```[^\n`]*\n?(.*?)\n?```", text, re.DOTALL)
    if match:
        return match.group(1)
    opened = re.search(r"```[^\n`]*\n(.*)", text, re.DOTALL)  # an unclosed fence: take the rest
    return opened.group(1) if opened else None


def after_python_fence(text: str) -> str:
    """If the first fence opens a python block, the text after it; in any case cut at the next fence."""
    start = text.find(_FENCE)
    if start != -1 and text[start + len(_FENCE):].lower().startswith("python"):
        text = text[start + len(_FENCE) + len("python"):]
    end = text.find(_FENCE)
    return text if end == -1 else text[:end]


def _parses(code: str) -> bool:
    try:
        ast.parse(code)
    except (SyntaxError, ValueError):
        return False
    return True


def longest_valid_span(code: str) -> str:
    """The code itself if it parses; else the parsable span of lines with the most non-blank lines."""
    if _parses(code):
        return code
    lines = code.split("\n")[:_SPAN_SEARCH_LINES]
    nonblank = [0]
    for line in lines:
        nonblank.append(nonblank[-1] + bool(line.strip()))
    best, best_count = "", 0
    for i in range(len(lines)):
        for j in range(len(lines), i, -1):
            count = nonblank[j] - nonblank[i]
            if count <= best_count:
                break
            span = "\n".join(lines[i:j])
            if _parses(span):
                best, best_count = span, count
                break
    return best


def _defined_names(node: ast.stmt) -> list[str]:
    if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
        return [node.name]
    targets = node.targets if isinstance(node, ast.Assign) else [getattr(node, "target", None)]
    return [t.id for t in targets if isinstance(t, ast.Name)]


def _keeps(node: ast.stmt) -> bool:
    """Definitions worth keeping: classes, name assignments, and functions that return something."""
    if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
        return any(isinstance(n, ast.Return) and n.value is not None for n in ast.walk(node))
    if isinstance(node, ast.ClassDef):
        return True
    return isinstance(node, ast.Assign | ast.AnnAssign) and bool(_defined_names(node))


def _used_names(node: ast.AST) -> set[str]:
    return {n.id for n in ast.walk(node) if isinstance(n, ast.Name)}


def _source(lines: list[str], node: ast.stmt) -> str:
    start = min([node.lineno] + [d.lineno for d in getattr(node, "decorator_list", [])])
    return "\n".join(lines[start - 1:node.end_lineno])


def names_read(code: str) -> set[str]:
    """Every name `code` reads (empty if it does not parse)."""
    try:
        return _used_names(ast.parse(code))
    except (SyntaxError, ValueError):
        return set()


def sanitize(code: str, entry_point: str | None = None, also_keep: Iterable[str] = ()) -> str:
    """Imports plus what the entry point and `also_keep` (e.g. names the tests call) depend on."""
    code = longest_valid_span(code.replace("\r\n", "\n").replace("\t", "    "))
    if not code.strip():
        return ""
    tree = ast.parse(code)
    lines = code.split("\n")
    imports = [n for n in tree.body if isinstance(n, ast.Import | ast.ImportFrom)]
    defs = [n for n in tree.body if _keeps(n)]
    by_name: dict[str, list[ast.stmt]] = {}
    for node in defs:
        for name in _defined_names(node):
            by_name.setdefault(name, []).append(node)
    if entry_point in by_name:
        reached, todo = set(), [entry_point, *also_keep]
        while todo:
            name = todo.pop()
            if name in reached or name not in by_name:
                continue
            reached.add(name)
            for node in by_name[name]:
                todo.extend(_used_names(node) - reached)
        defs = [n for n in defs if reached.intersection(_defined_names(n))]
    return "\n".join([_source(lines, n) for n in imports] + [_source(lines, n) for n in defs]) + "\n"
