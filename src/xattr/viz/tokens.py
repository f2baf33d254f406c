"""Highlighted tokens, as Table 1 of ch. 6: scores in [0, 1]; 0.33-0.66 orange, 0.66-1 red.

>>> html = render_html(tokens, scores)          # a <p> with <span style=...> per highlighted token
>>> print(render_terminal(tokens, scores))      # ANSI colours (a terminal)
>>> render_plain(tokens, scores)                 # [[red]] and [orange] markers (a text file)
"""

from __future__ import annotations

import html as _html
from collections.abc import Sequence

import torch

LEVELS = ((0.66, "#ff4d4d", "\033[41;97m"), (0.33, "#ffb347", "\033[43;30m"))  # red, orange
RESET = "\033[0m"


def _scores(tokens: Sequence[str], scores, normalize: bool, special: Sequence[bool] | None = None) -> list[float]:
    """Scores in [0, 1] (min-max over the tokens that are not ``special``: a transformer's [CLS] / [SEP] keep
    their raw score and are shown apart, so they do not set the scale of the words)."""
    s = torch.as_tensor(scores, dtype=torch.float64).flatten()[: len(tokens)]
    if s.numel() != len(tokens):
        raise ValueError(f"{len(tokens)} tokens but {s.numel()} scores")
    words = torch.ones(len(tokens), dtype=torch.bool) if special is None else ~torch.as_tensor(list(special)).bool()
    if normalize and words.any():
        lo, hi = s[words].min(), s[words].max()
        s = torch.where(words, (s - lo) / (hi - lo) if hi > lo else torch.zeros_like(s), s)
    return s.tolist()


def _special(special: Sequence[bool] | None, n: int) -> list[bool]:
    return [False] * n if special is None else [bool(v) for v in special]


def level(score: float) -> int | None:
    """Index into ``LEVELS`` (0 red, 1 orange) or None (not highlighted)."""
    for i, (t, *_rest) in enumerate(LEVELS):
        if score >= t:
            return i
    return None


def render_html(tokens: Sequence[str], scores, normalize: bool = True, title: str | None = None,
                special: Sequence[bool] | None = None) -> str:
    """One HTML paragraph; ``normalize`` min-max scales the scores to [0, 1] first (padding excluded
    by passing only the real tokens). ``special`` tokens are grey, with their raw score."""
    parts = []
    for tok, s, sp in zip(tokens, _scores(tokens, scores, normalize, special), _special(special, len(tokens))):
        lv, esc = level(s), _html.escape(tok)
        if sp:
            parts.append(f'<span style="color:#888" title="special token, score {s:.3g}">{esc}</span>')
            continue
        parts.append(esc if lv is None else f'<span style="background:{LEVELS[lv][1]}" title="{s:.2f}">{esc}</span>')
    head = f"<b>{_html.escape(title)}</b>: " if title else ""
    return f"<p>{head}{' '.join(parts)}</p>"


def render_terminal(tokens: Sequence[str], scores, normalize: bool = True,
                    special: Sequence[bool] | None = None) -> str:
    """The tokens with ANSI background colours (red >= 0.66, orange >= 0.33); ``special`` tokens dim."""
    out = []
    for tok, s, sp in zip(tokens, _scores(tokens, scores, normalize, special), _special(special, len(tokens))):
        lv = None if sp else level(s)
        out.append(f"\033[2m{tok}{RESET}" if sp else tok if lv is None else f"{LEVELS[lv][2]}{tok}{RESET}")
    return " ".join(out)


def render_plain(tokens: Sequence[str], scores, normalize: bool = True, special: Sequence[bool] | None = None) -> str:
    """The tokens as plain text for files: ``[[token]]`` red (>= 0.66), ``[token]`` orange (>= 0.33); a
    ``special`` token as ``token{raw score}``."""
    marks = ("[[{}]]", "[{}]")
    out = []
    for tok, s, sp in zip(tokens, _scores(tokens, scores, normalize, special), _special(special, len(tokens))):
        out.append(f"{tok}{{{s:.3g}}}" if sp else tok if (lv := level(s)) is None else marks[lv].format(tok))
    return " ".join(out)
