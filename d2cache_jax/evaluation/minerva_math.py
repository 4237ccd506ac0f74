"""Minerva-style MATH scoring, the path lm-eval's `minerva_math` tasks take (Lewkowycz et al. 2022, app. D).

The answer is read from the output (the last `\\boxed{...}`, else the sentence "Final Answer: The final
answer is X. I hope it is correct."), normalised (units and text markup dropped, shorthand TeX such as
`\\frac12` braced), and judged equal to the normalised gold when the strings match or when sympy
simplifies the difference of the two parsed LaTeX expressions to 0.

sympy's own LaTeX parser needs antlr4-python3-runtime 4.11. When that is not what is installed (math-verify
pins 4.13), the expressions are parsed with latex2sympy2_extended instead, math-verify's parser;
`latex_backend()` says which one is used.
"""

from __future__ import annotations

import re
import signal
import threading
from collections.abc import Callable
from typing import Any

INVALID = "[invalidanswer]"
_SENTENCE = re.compile(r"Final Answer: The final answer is(.*?)\. I hope it is correct\.", re.DOTALL)
_TAIL = "I hope it is correct."

# Normalisation tables of Minerva's appendix D, as lm-eval's minerva_math utils apply them.
SUBSTITUTIONS = (("an ", ""), ("a ", ""), (".$", "$"), ("\\$", ""), ("\\ ", ""), (" ", ""), ("mbox", "text"),
                 (",\\text{and}", ","), ("\\text{and}", ","), ("\\text{m}", "\\text{}"))
REMOVED_EXPRESSIONS = (
    "square", "ways", "integers", "dollars", "mph", "inches", "ft", "hours", "km", "units", "\\ldots", "sue",
    "points", "feet", "minutes", "digits", "cents", "degrees", "cm", "gm", "pounds", "meters", "meals", "edges",
    "students", "childrentickets", "multiples", "\\text{s}", "\\text{.}", "\\text{\ns}", "\\text{}^2",
    "\\text{}^3", "\\text{\n}", "\\text{}", "\\mathrm{th}", "^\\circ", "^{\\circ}", "\\;", ",\\!", "{,}", '"',
    "\\dots")


def last_boxed(text: str) -> str | None:
    """The last `\\boxed{...}` (braces balanced) or `\\boxed X` (up to a `$`), or `\\fbox{...}`, with its command."""
    if "\\boxed " in text:
        return "\\boxed " + text.split("\\boxed ")[-1].split("$")[0]
    start = text.rfind("\\boxed")
    if start < 0:
        start = text.rfind("\\fbox")
        if start < 0:
            return None
    depth = 0
    for end in range(start, len(text)):
        if text[end] == "{":
            depth += 1
        elif text[end] == "}":
            depth -= 1
            if depth == 0:
                return text[start:end + 1]
    return None


def unbox(boxed: str) -> str | None:
    """The content of a `\\boxed{...}` or `\\boxed X` string (None for anything else, e.g. `\\fbox`)."""
    if boxed.startswith("\\boxed "):
        return boxed[len("\\boxed "):]
    if boxed.startswith("\\boxed{") and boxed.endswith("}"):
        return boxed[len("\\boxed{"):-1]
    return None


def minerva_sentence_answer(text: str) -> str:
    """X of the first "Final Answer: The final answer is X. I hope it is correct." (the end may be cut off)."""
    match = _SENTENCE.search(text + _TAIL)
    return match.group(1).strip() if match else INVALID


def extract_answer(text: str) -> str:
    """The output's answer before normalisation: the last boxed content, else the Minerva sentence."""
    boxed = last_boxed(text)
    content = unbox(boxed) if boxed else None
    if content is not None and content.strip():
        return content.strip()
    return minerva_sentence_answer(text)


def _drop_units(text: str) -> str:
    """Remove the alphabetic unit words: first as whole words (not after a backslash), then glued ones
    outside LaTeX command names (so `\\left` keeps its `ft`)."""
    words = [w for w in REMOVED_EXPRESSIONS if w.isalpha()]
    for word in words:
        text = re.sub(rf"(?<!\\)\b{word}\b", "", text)
    return text


def normalize_final_answer(answer: str) -> str:
    """Minerva's normal form of a final answer (appendix D), with lm-eval's fixes for `\\left`, `\\sqrt[n]`
    and tuples of small numbers."""
    answer = _drop_units(answer.split("=")[-1])
    for before, after in SUBSTITUTIONS:
        answer = answer.replace(before, after)
    for expr in REMOVED_EXPRESSIONS:
        if expr.isalpha():
            pieces = re.split(r"(\\[a-zA-Z]+)", answer)  # odd pieces are command names: leave them
            answer = "".join(p if i % 2 else p.replace(expr, "") for i, p in enumerate(pieces))
        else:
            answer = answer.replace(expr, "")
    answer = re.sub(r"(.*?)(\$)(.*?)(\$)(.*)", r"$\3$", answer)  # the first $...$ span
    for command in ("text", "textbf", "overline"):
        answer = re.sub(rf"(\\{command}\{{)(.*?)(\}})", r"\2", answer)
    answer = re.sub(r"(\\boxed\{)(.*)(\})", r"\2", answer)
    answer = re.sub(r"(frac)([^{])(.)", r"frac{\2}{\3}", answer)  # \frac12 -> \frac{1}{2}
    answer = re.sub(r"(sqrt)(\[[^\]]*\])(\w)", r"\1\2{\3}", answer)  # \sqrt[3]a -> \sqrt[3]{a}
    answer = re.sub(r"(sqrt)(?!\[)([^{])", r"sqrt{\2}", answer)  # \sqrt2 -> \sqrt{2}
    answer = answer.replace("$", "")
    if re.fullmatch(r"-?\d{1,3}(,\d{3})+", answer):  # 100,000 -> 100000, but not the tuple 0,1
        answer = answer.replace(",", "")
    return answer


def latex_backend() -> str:
    """`sympy` when sympy's LaTeX parser can run (antlr4 4.11), else `latex2sympy2_extended`."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        if version("antlr4-python3-runtime").startswith("4.11"):
            return "sympy"
    except PackageNotFoundError:
        pass
    return "latex2sympy2_extended"


def _parser() -> Callable[[str], Any]:
    if latex_backend() == "sympy":
        from sympy.parsing.latex import parse_latex

        return parse_latex
    from latex2sympy2_extended import latex2sympy

    return latex2sympy


class _Timeout:
    """SIGALRM time limit in the main thread; no limit elsewhere (signals only reach the main thread)."""

    def __init__(self, seconds: int):
        self.seconds = seconds
        self.active = threading.current_thread() is threading.main_thread() and hasattr(signal, "SIGALRM")

    def _raise(self, signum, frame):
        raise TimeoutError

    def __enter__(self):
        if self.active:
            self.previous = signal.signal(signal.SIGALRM, self._raise)
            signal.alarm(self.seconds)

    def __exit__(self, *exc):
        if self.active:
            signal.alarm(0)
            signal.signal(signal.SIGALRM, self.previous)


def is_equiv(a: str, b: str, timeout_s: int = 5) -> bool:
    """Equal normalised strings, or LaTeX whose parsed difference sympy simplifies to 0 (False on any failure)."""
    if a and a == b:
        return True
    import sympy

    try:
        with _Timeout(timeout_s):
            parse = _parser()
            diff = parse(a) - parse(b)
            return bool(sympy.simplify(diff) == 0)
    except Exception:  # unparsable, not subtractable, timed out: not equivalent, as upstream
        return False


def score(output: str, gold: str) -> tuple[bool, str]:
    """Minerva exact match of an output against a gold answer, and the normalised answer read."""
    answer = normalize_final_answer(extract_answer(output))
    return is_equiv(answer, normalize_final_answer(gold)), answer
