"""What a title is, in one place: how titles are cleaned at ingest (the catalogue's, and so the
prompts' and the recommendations'), and how what people type is matched to them (served
histories and exclude lists, `cft recommend --history`).

A client sends a title as its own database keeps it, which is often not as ingest left it: accents
decomposed (NFD, as macOS and some databases write them), full-width letters (Japanese input),
"™" where ingest made "TM", a soft hyphen, two spaces, "&" where the catalogue has "&amp;". `title_key`
puts both through the same rule, so they meet.

HTML entities: the Amazon titles of D3's processed files (the `d3` source format) keep them
("Tom &amp; Jerry", "RioRand&trade;"), and so do the catalogue and the prompts, as the reference's
are. A recommendation shows its title unescaped (`display_title`), and `title_key` unescapes
what it is given, so the shown title, sent back in a history, finds its item.
"""

from __future__ import annotations

import functools
import html
import re
import sys
import unicodedata

LINE_BREAKS = "\r\n\t\v\f\u2028\u2029"  # each becomes one space


@functools.cache
def _unwanted() -> re.Pattern:
    """Every control (Cc) and format (Cf: zero-width, soft hyphen, byte order mark) character and
    line break, as one character class (built once a process, ~0.2 s; a search is C speed)."""
    points = [c for c in range(sys.maxunicode + 1)
              if unicodedata.category(chr(c)) in ("Cc", "Cf") or chr(c) in LINE_BREAKS]
    runs: list[list[int]] = []  # [first, last] of each run of consecutive code points
    for c in points:
        if runs and c == runs[-1][1] + 1:
            runs[-1][1] = c
        else:
            runs.append([c, c])
    return re.compile("[" + "".join(f"{re.escape(chr(first))}-{re.escape(chr(last))}" for first, last in runs) + "]")


def normalize_title(text: str) -> str:
    """A title as people see it: Unicode NFKC, control and format (zero-width) characters removed,
    line breaks and tabs a space, runs of spaces collapsed to one, stripped."""
    if text.isascii() and text.isprintable():  # (most titles: NFKC and the filter change nothing)
        return " ".join(text.split())
    text = unicodedata.normalize("NFKC", text)
    if (unwanted := _unwanted()).search(text):
        text = unwanted.sub(lambda m: " " if m.group() in LINE_BREAKS else "", text)
    return " ".join(text.split())


def title_key(text: str) -> str:
    """How a title is looked up: HTML entities unescaped, `normalize_title`, then case-folded
    ("Heat (1995)", "heat  (1995)" and a full-width "Ｈｅａｔ (1995)" are one key; so are
    "Tom &amp; Jerry" and "tom & jerry")."""
    return normalize_title(display_title(text)).casefold()


def display_title(title: str) -> str:
    """A catalogue title as a recommendation shows it: HTML entities unescaped ("RioRand&trade;"
    shows "RioRand™"); a title without "&" as it is."""
    return html.unescape(title) if "&" in title else title
