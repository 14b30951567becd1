"""What one sample vine looks like: names, captions, ids, seed rows and OpenVine event tags.

The value ranges and quirks follow the seed system's data (see
shared/reference/vine-data.md): display names are not unique and mix scripts and
emoji, captions are often non-ASCII with hashtags glued to the text, vine ids lead
with characters that roughly follow time, and the BigQuery rows carry the seed
query's LEFT JOIN nulls and its ASCII-only hashtag extraction.

Every function draws from the `random.Random` it is given; `devstack.sampledata`
calls them in a fixed order, so equal seeds give byte-identical files. Changing the
number or order of draws here changes every sample file after that point.
"""

import random
import re
from typing import Any, Dict, List, Optional

VINE_START = 1358985600  # 2013-01-24
VINE_END = 1484611200  # 2017-01-17
LOOPS_START = 1396310400  # 2014-04-01: loop counts exist from here
EVENTS_START = 1748736000  # 2025-06-01
EVENTS_END = 1761955199  # 2025-10-31
LOOP_RECORD = 328_000_000
ID_ALPHABET = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
# Leading characters roughly follow time (b9KOOWX7HUx 2013 ... 5002wXwQOKX 2016).
_ID_LEAD = {2013: "bhMO", 2014: "MOei", 2015: "ei5I", 2016: "5IZ0", 2017: "Z0"}
PLACEHOLDER_TITLES = ("Rescued Vine video", "Untitled")
# The seed query's REGEXP_EXTRACT_ALL(description, r'#\w+') under RE2, whose \w is ASCII.
_BQ_HASHTAG = re.compile(r"#([0-9A-Za-z_]+)")
_SECP256K1_N = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141

_FIRST = ("Jake", "Maria", "Yuki", "Dan", "Brittany", "Marcus", "Sofia", "Chris", "Amanda",
          "Kevin", "Lele", "Nash", "Rudy", "Zach", "Aya", "Omar", "Ivan", "Nong", "Lucía")
_LAST = ("Gomez", "Smith", "Tanaka", "Johnson", "Lee", "Kim", "Petrov", "Haddad", "Ortiz")
_NATIVE = ("김민지", "さくら🌸", "Саша", "سارة", "ปุ๊กกี้", "José Ñúñez", "みゆき", "Дима 🐻", "민준")
_EMOJI = ("😂", "🔥", "❤️", "👍🏽", "👨‍👩‍👧", "🏳️‍🌈", "🤦🏻‍♂️", "💯", "🙌🏿", "😭", "✌️", "👀",
          "🐶", "🎶", "👩🏾‍🍳")
_TEXT = {
    "en": ("when your mom calls you by your full name", "wait for it", "I can't even",
           "this is so me", "do it for the vine", "me every monday morning", "why are you running",
           "and that's how I met your mother", "road trip", "my dog is better than yours",
           "first day of school", "nobody:", "what are those", "on fleek", "hi"),
    "ja": ("かわいい", "猫が好き", "今日の朝ごはん", "おはよう", "やばい笑", "ねこ動画"),
    "ko": ("오늘 너무 웃겨", "사랑해", "방탄소년단 최고", "귀여워", "ㅋㅋㅋㅋ"),
    "ar": ("ضحك حتى البكاء", "صباح الخير", "هههههه", "يا سلام"),
    "ru": ("лучшее видео", "смешно до слёз", "институт", "привет всем"),
    "th": ("ตลกมาก", "สวัสดีครับ", "น่ารักจัง"),
    "es": ("¡Feliz Año Nuevo!", "qué risa", "mañana otra vez", "jajaja niño", "el señor del café"),
}
_NON_ASCII_LANGS = ("ja", "ko", "ar", "ru", "th", "es")
_TAGS_ASCII = ("#vine", "#funny", "#lol", "#BTS", "#comedy", "#DoItForTheVine", "#MagicHour",
               "#6secondsofme", "#RevineIfYouLaughed", "#dogsofvine", "#Music", "#art",
               "#howto", "#vine_2014", "#LOL")
_TAGS_OTHER = ("#防弾少年団", "#방탄소년단", "#институт", "#かわいい", "#ตลก", "#FelizAñoNuevo",
               "#Año2015", "#niño", "#café", "#Ñandú")


def bigquery_hashtags(description: Optional[str]) -> List[str]:
  """What the seed query's hashtags column holds: ASCII-only `#\\w+`, lower-cased, distinct."""
  seen: List[str] = []
  for tag in _BQ_HASHTAG.findall(description or ""):
    low = tag.lower()
    if low not in seen:
      seen.append(low)
  return seen


def display_name(rng: random.Random, user_id: int) -> str:
  """A display name: `vine_user_<id>`, a native-script name, or a Latin one with extras."""
  roll = rng.random()
  if roll < 0.2:
    return "vine_user_%d" % user_id
  if roll < 0.3:
    name = rng.choice(_NATIVE)
    return name if rng.random() < 0.2 else "%s %d" % (name, rng.randrange(1, 10000))
  name = rng.choice(_FIRST)
  if rng.random() < 0.6:
    name += " " + rng.choice(_LAST)
  if rng.random() < 0.85:
    name = rng.choice(("%s %d", "%s_%d", "%s%d")) % (name, rng.randrange(1, 100000))
  if rng.random() < 0.15:
    name += " " + rng.choice(_EMOJI)
  if rng.random() < 0.12:
    name += "  ig: %s_%s" % (name.split()[0].lower(), rng.randrange(10, 999))
  return name


def caption(rng: random.Random) -> Optional[str]:
  """A vine description (at most 140 characters), or None or "" as the seed data has them."""
  roll = rng.random()
  if roll < 0.005:
    return None
  if roll < 0.04:
    return ""
  if roll < 0.06:
    return rng.choice(PLACEHOLDER_TITLES)
  lang = rng.choice(_NON_ASCII_LANGS) if rng.random() < 0.3 else "en"
  parts = [rng.choice(_TEXT[lang])]
  for _ in range(rng.choice((0, 1, 1, 2))):
    parts.append(rng.choice(_TEXT[lang if rng.random() < 0.8 else "en"]))
  text = " ".join(parts)
  if rng.random() < 0.25:
    text += " " + "".join(rng.choice(_EMOJI) for _ in range(rng.randint(1, 3)))
  if rng.random() < 0.42:
    count = min(14, 1 + int(rng.expovariate(1 / 1.6)))
    for _ in range(count):
      tag = rng.choice(_TAGS_OTHER) if rng.random() < 0.2 else rng.choice(_TAGS_ASCII)
      # Tags are glued to the text as often as not (かわいい#BTS).
      text += ("" if rng.random() < 0.3 else " ") + tag
  if rng.random() < 0.12:
    # Long runs of spaces, usually where a space already was.
    spaces = [i for i, ch in enumerate(text) if ch == " "]
    at = rng.choice(spaces) if spaces else len(text)
    text = text[:at] + " " * rng.randint(3, 12) + text[at:]
  if rng.random() < 0.01:
    text += " \ufffd\ufffd"
  return text[:140]


def new_vine_id(rng: random.Random, created: Optional[int], used: set) -> str:
  """An 11-character vine id not in `used` (added to it), its lead following `created`."""
  year = 2013 + (created - VINE_START) * 4 // (VINE_END - VINE_START) if created else 2015
  lead = _ID_LEAD.get(year, ID_ALPHABET)
  while True:
    vid = rng.choice(lead) + "".join(rng.choice(ID_ALPHABET) for _ in range(10))
    if vid not in used:
      used.add(vid)
      return vid


def new_openvine_id(rng: random.Random, before: int, used: set) -> str:
  """An OpenVine id (`<ms timestamp>-<8 hex>`) up to 3 days before `before`, not in `used`."""
  while True:
    ms = (before - rng.randint(60, 86400 * 3)) * 1000 + rng.randrange(1000)
    oid = "%013d-%08x" % (ms, rng.getrandbits(32))
    if oid not in used:
      used.add(oid)
      return oid


def seed_row(rng: random.Random, vine_id: str, username: str, created: Optional[int],
             description: Optional[str]) -> Dict[str, Any]:
  """One row of the BigQuery seed query; `created` None is a vine missing from vine_posts."""
  joined = created is not None  # vine_posts side of the LEFT JOIN present
  roll = rng.random()
  if roll < 0.07:
    loops = None
  elif roll < (0.45 if (created or 0) < LOOPS_START else 0.2):
    loops = 0
  else:
    loops = min(LOOP_RECORD, int(rng.lognormvariate(7.5, 2.2)))
  likes = None if loops is None or rng.random() < 0.05 else round(loops * rng.uniform(0.01, 0.04))
  if joined:
    base = likes or rng.randint(0, 20)
    comments = int(base * rng.uniform(0.02, 0.15))
    reposts = int(base * rng.uniform(0.01, 0.2))
  else:
    comments = reposts = None
  return {
      "vineId": vine_id, "username": username, "description": description, "loops": loops,
      "likes": likes, "comment_count": comments, "repost_count": reposts,
      "created_timestamp": created, "hashtags": bigquery_hashtags(description),
  }


def event_tags(rng: random.Random, vine_id: Optional[str], title: str, oid: str,
               media_base: str, with_vine_id: bool) -> List[List[str]]:
  """Tags of an OpenVine kind 32222 event, with the video URL variants seen in the wild."""
  url = "%s/media/%s" % (media_base, oid)
  tags = [["d", vine_id]] if vine_id is not None else []
  tags.append(["title", title])
  variant = rng.random()
  if variant < 0.75:
    tags.append(["url", url])
    if variant < 0.15:
      tags.append(["imeta", "url " + url, "m video/mp4", "dim 480x480"])
  elif variant < 0.88:
    tags.append(["r", url])
  else:
    tags.append(["imeta", "url " + url, "m video/mp4", "dim 480x480", "duration 6"])
  tags += [["m", "video/mp4"], ["dim", "480x480"], ["duration", "6"],
           ["thumb", "%s/thumbnails/%s.jpg" % (media_base, oid)],
           ["t", "vine"], ["t", "nostrvine"], ["alt", "Vine video: " + title[:80]],
           ["client", "openvine"]]
  if with_vine_id and vine_id is not None:
    tags.append(["vine_id", vine_id])
  return tags

