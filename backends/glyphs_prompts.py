"""Prompts of the built-in ``glyphs`` backend: which word does a prompt ask to render?

The word is the prompt's text in straight ``"..."`` or curly ``“...”`` double quotes (exactly one
span), upper-cased, 1 to ``MAX_LEN`` letters A-Z: ``a sign that says "OPEN"`` -> ``OPEN``. A prompt
that is a bare word (``open``) is read as that word too. Anything else is a ``ValueError`` saying
what is understood.
"""

from __future__ import annotations

import re

from .glyphs_data import MAX_LEN

__all__ = ["glyphs_prompt", "parse_word_prompt"]

_QUOTED = re.compile(r'"([^"]*)"|“([^”]*)”')


def parse_word_prompt(prompt: str) -> str:
    """The upper-case word ``prompt`` asks for (see module doc)."""
    if not isinstance(prompt, str):
        raise TypeError(f"glyphs prompt must be a string, got {type(prompt).__name__}: {prompt!r}")
    spans = [a or b for a, b in _QUOTED.findall(prompt)]
    if not spans and prompt.strip().isalpha():
        spans = [prompt.strip()]
    word = spans[0].strip().upper() if len(spans) == 1 else ""
    if len(spans) == 1 and word.isascii() and word.isalpha() and 1 <= len(word) <= MAX_LEN:
        return word
    problem = "no quoted word" if not spans else f"quoted text {spans!r}"
    raise ValueError(
        f"the glyphs model cannot render prompt {prompt!r} ({problem}); it draws one word of 1-{MAX_LEN} "
        'letters A-Z given in double quotes, e.g. \'a sign that says "OPEN"\''
    )


def glyphs_prompt(word: str) -> str:
    """The canonical prompt for ``word``: ``a sign that says "WORD"``."""
    return f'a sign that says "{word}"'
