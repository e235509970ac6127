"""What a title is, in one place: how titles are cleaned at ingest (the catalogue's, and so the
prompts' and the recommendations'), and how what people type is matched to them (served
histories and exclude lists, `cft recommend --history`).

Two rules, for two jobs:
- `normalize_title` (ingest, and free text shown to the model) keeps a title as its source
  shows it: Unicode NFC, so an accent decomposed (NFD, as macOS writes it) is composed, and
  nothing else of the text changes. "E=mc²", "LEGO™", full-width "ＰＳ５" and half-width katakana
  stay as written, and so do the joiners that Persian, Indic scripts and emoji sequences need
  ("می‌خواهم", "👩‍💻"). What it removes is what a reader cannot see or what would reach past the
  title where it is shown: control characters and the format characters in `INVISIBLE_FORMAT`.
- `title_key` (lookup) folds everything a client's own database may spell otherwise: NFKC
  (full-width letters, "™" as "TM", "²" as "2"), every control and format character, case.

A client sends a title as its own database keeps it, which is often not as ingest left it: accents
decomposed, full-width letters (Japanese input), "TM" where the catalogue has "™", a soft hyphen,
two spaces, "&" where the catalogue has "&amp;". `title_key` puts both through the same rule, so
they meet.

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

# The format (Cf) characters ingest removes. Each shows nothing, or reaches past the title into
# the text around it where the title is shown. Every other format character changes how the title
# itself shows and is kept: the joiners ZWNJ and ZWJ, the bidi marks LRM, RLM and ALM, Arabic's
# prepended number marks, emoji tag sequences (a flag of Scotland), and a few scripts' own.
INVISIBLE_FORMAT = (
    "\u00ad"                   # soft hyphen: shows only where a line breaks
    "\u200b\u2060\ufeff"       # zero-width space, word joiner, byte order mark: line breaking only
    "\u2061\u2062\u2063\u2064"  # invisible mathematical operators
    "\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069"  # bidi embeddings, overrides, isolates:
    # their effect runs on past the title when it is not closed ("Trojan Source" spoofing)
    "\u206a\u206b\u206c\u206d\u206e\u206f"  # deprecated format characters
    "\ufff9\ufffa\ufffb"       # interlinear annotation: hides text between its marks
    "\U000e0001"               # language tag (deprecated)
)


@functools.cache
def _character_class(keep_visible_format: bool) -> re.Pattern:
    """Every control (Cc) character and line break, and the format (Cf) characters to remove (those
    in INVISIBLE_FORMAT, or all with `keep_visible_format` False), as one character class (built
    once a process, ~0.2 s; a search is C speed)."""
    def unwanted(c: str) -> bool:
        category = unicodedata.category(c)
        if category == "Cf":
            return c in INVISIBLE_FORMAT or not keep_visible_format
        return category == "Cc" or c in LINE_BREAKS

    points = [c for c in range(sys.maxunicode + 1) if unwanted(chr(c))]
    runs: list[list[int]] = []  # [first, last] of each run of consecutive code points
    for c in points:
        if runs and c == runs[-1][1] + 1:
            runs[-1][1] = c
        else:
            runs.append([c, c])
    return re.compile("[" + "".join(f"{re.escape(chr(first))}-{re.escape(chr(last))}" for first, last in runs) + "]")


def _clean(text: str, form: str, keep_visible_format: bool) -> str:
    """`text` in Unicode `form`, the characters of `_character_class` removed (line breaks a space),
    spaces collapsed and stripped; empty where only format characters are left."""
    if text.isascii() and text.isprintable():  # (most titles: neither form nor class changes them)
        return " ".join(text.split())
    text = unicodedata.normalize(form, text)
    if (unwanted := _character_class(keep_visible_format)).search(text):
        text = unwanted.sub(lambda m: " " if m.group() in LINE_BREAKS else "", text)
    text = " ".join(text.split())
    if not text or unicodedata.category(text[0]) != "Cf":  # (stripped: a visible first character)
        return text
    # Format characters alone (a title that was only "\u200d") show nothing: such a title is empty.
    return text if any(c != " " and unicodedata.category(c) != "Cf" for c in text) else ""


def normalize_title(text: str) -> str:
    """A title as its source shows it: Unicode NFC; control characters and INVISIBLE_FORMAT's
    removed; line breaks and tabs a space, runs of spaces collapsed to one, stripped; a title left
    with nothing visible is empty."""
    return _clean(text, "NFC", keep_visible_format=True)


def title_key(text: str) -> str:
    """How a title is looked up: HTML entities unescaped, Unicode NFKC, every control and format
    character removed, spaces as in `normalize_title`, case-folded ("Heat (1995)", "heat  (1995)"
    and a full-width "Ｈｅａｔ (1995)" are one key; so are "Tom &amp; Jerry" and "tom & jerry",
    and "LEGO™ Star Wars" and "LEGOTM Star Wars")."""
    return _clean(display_title(text), "NFKC", keep_visible_format=False).casefold()


def display_title(title: str) -> str:
    """A catalogue title as a recommendation shows it: HTML entities unescaped ("RioRand&trade;"
    shows "RioRand™"); a title without "&" as it is."""
    return html.unescape(title) if "&" in title else title
