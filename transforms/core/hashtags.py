"""Unicode-aware hashtag extraction.

The seed's SQL used RE2 `\\w`, which is ASCII-only: `#防弾少年団` vanished and
`#FelizAñoNuevo` became `feliza`. Here a hashtag is `#` followed by letters, marks
(Thai and Devanagari vowels are marks), numbers and connector punctuation, lower-cased.
"""

import unicodedata
from typing import Iterable, List

_WORD_CATEGORIES = ("L", "M", "N")


def _is_tag_char(ch: str) -> bool:
  cat = unicodedata.category(ch)
  return cat[0] in _WORD_CATEGORIES or cat == "Pc"


def extract(text: str) -> List[str]:
  """All hashtags of a caption, lower-cased, in order of first appearance, unique.

  A tag glued to text (`かわいい#BTS`) counts; `#` followed by punctuation only does not.
  """
  found: List[str] = []
  if not text or "#" not in text:
    return found
  i, n = 0, len(text)
  while i < n:
    if text[i] == "#":
      j = i + 1
      while j < n and _is_tag_char(text[j]):
        j += 1
      tag = text[i + 1:j].lower()
      # A tag made only of underscores or marks carries no word.
      if tag and any(unicodedata.category(c)[0] in ("L", "N") for c in tag) and tag not in found:
        found.append(tag)
      i = j if j > i + 1 else i + 1
    else:
      i += 1
  return found


def merge(primary: Iterable[str], extra: Iterable[str]) -> List[str]:
  """Primary tags first, then any extra (lower-cased) not already present.

  An extra tag that is a strict prefix of a primary one is the ASCII-only RE2
  truncation (`feliza` of `felizañonuevo`) and is dropped.
  """
  out: List[str] = list(dict.fromkeys(primary))
  primary_set = list(out)
  for tag in (t.strip().lower() for t in extra):
    if not tag or tag in out:
      continue
    if any(p.startswith(tag) and len(p) > len(tag) for p in primary_set):
      continue
    out.append(tag)
  return out
