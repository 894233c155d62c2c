"""Answer extraction and checking: the last ``\\boxed{...}`` of a response, compared with math-verify.

math-verify's timeouts use ``signal.alarm``, which works only in the main thread; off the main
thread the checks run without a timeout (``parsing_timeout=None``), so they never raise for that.
"""

from __future__ import annotations

import re
import threading

_GSM_ANSWER = re.compile(r"####\s*(.+?)\s*$", re.S)


def last_boxed(text: str) -> str | None:
    """Content of the last ``\\boxed{...}`` (or ``\\fbox{...}``) in ``text``, braces balanced; ``None`` if absent."""
    idx = max(text.rfind("\\boxed"), text.rfind("\\fbox"))
    if idx < 0:
        return None
    i = text.find("{", idx)
    if i < 0:
        m = re.match(r"\\boxed\s+([^\s$]+)", text[idx:])
        return m.group(1) if m else None
    depth = 0
    for j in range(i, len(text)):
        if text[j] == "{":
            depth += 1
        elif text[j] == "}":
            depth -= 1
            if depth == 0:
                return text[i + 1 : j]
    return None


def _timeout() -> int | None:
    return 5 if threading.current_thread() is threading.main_thread() else None


def is_correct(response: str, gold: str | int) -> bool:
    """True when the last boxed answer of ``response`` equals ``gold`` (math-verify, gold first)."""
    from math_verify import parse, verify

    boxed = last_boxed(response)
    if boxed is None:
        return False
    t = _timeout()
    gold_parsed = parse(f"${gold}$", parsing_timeout=t)
    pred_parsed = parse(f"$\\boxed{{{boxed}}}$", parsing_timeout=t)
    if not gold_parsed or not pred_parsed:
        return str(boxed).strip() == str(gold).strip()
    return bool(verify(gold_parsed, pred_parsed, timeout_seconds=t))


def gsm8k_gold(answer: str) -> str:
    """The number after ``####`` in a GSM8K ``answer`` field, commas removed."""
    m = _GSM_ANSWER.search(answer)
    if m is None:
        raise ValueError(f"GSM8K answer has no '#### <number>' line: {answer[-80:]!r}")
    return m.group(1).replace(",", "").strip()
