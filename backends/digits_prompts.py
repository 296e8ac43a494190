"""Prompts of the built-in ``digits`` backend and its rewards: which digit does a prompt name?

One parser, imported by :mod:`treesdk_backends.digits` (to condition the flow model) and by
:mod:`treesdk_plugins.digits` (to know which class probability to score), so both always agree.

A prompt is understood when, after lower-casing and dropping punctuation, it names **exactly one**
digit (a numeral ``0``-``9`` or a word ``zero``-``nine``) and every other word is one of
:data:`FILLER_WORDS`. Examples: ``"a handwritten digit 7"``, ``"the digit seven"``, ``"digit 3"``,
``"7"``, ``"A hand-written 4."``. Anything else (``"a cat"``, ``"digits 3 and 4"``, ``"12"``) is a
``ValueError`` that says what is understood.
"""

from __future__ import annotations

import re

__all__ = ["DIGIT_WORDS", "FILLER_WORDS", "digit_prompt", "parse_digit_prompt"]

#: number words, index = digit
DIGIT_WORDS: tuple[str, ...] = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")

#: words allowed around the digit; they carry no information for an 8x8 digit model
FILLER_WORDS: frozenset[str] = frozenset(
    {
        "a", "an", "the", "of", "image", "picture", "photo", "drawing", "digit", "number", "numeral",
        "handwritten", "hand", "written", "hand-written", "grayscale", "greyscale", "small", "8x8",
    }
)  # fmt: skip

_TOKEN = re.compile(r"[a-z0-9x-]+")


def parse_digit_prompt(prompt: str) -> int:
    """The digit (0-9) that ``prompt`` names.

    Raises:
        ValueError: naming the prompt and listing what is understood, when the prompt names no digit,
            several digits, or contains words outside :data:`FILLER_WORDS`.
    """
    if not isinstance(prompt, str):
        raise TypeError(f"digit prompt must be a string, got {type(prompt).__name__}: {prompt!r}")
    tokens = _TOKEN.findall(prompt.lower())
    digits: list[int] = []
    unknown: list[str] = []
    for token in tokens:
        if len(token) == 1 and token.isdigit():
            digits.append(int(token))
        elif token in DIGIT_WORDS:
            digits.append(DIGIT_WORDS.index(token))
        elif token not in FILLER_WORDS:
            unknown.append(token)
    if len(digits) == 1 and not unknown:
        return digits[0]
    if unknown:
        problem = f"unknown word(s) {unknown}"
    elif not digits:
        problem = "it names no digit"
    else:
        problem = f"it names {len(digits)} digits {digits}, expected exactly one"
    raise ValueError(
        f"the digits model cannot condition on prompt {prompt!r} ({problem}). It understands prompts "
        "naming exactly one digit 0-9 as a numeral or a word, e.g. 'a handwritten digit 7', "
        f"'the digit seven', 'digit 3', '7'; other allowed words: {', '.join(sorted(FILLER_WORDS))}"
    )


def digit_prompt(digit: int) -> str:
    """The canonical prompt for ``digit``: ``"a handwritten digit {digit}"``."""
    if not 0 <= int(digit) <= 9:
        raise ValueError(f"digit must be in 0..9, got {digit}")
    return f"a handwritten digit {int(digit)}"
