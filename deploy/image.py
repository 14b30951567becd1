"""The worker image's build context and base image, read offline from Dockerfile and .dockerignore.

`python -m deploy.image` lists the files `docker build .` would send. The .dockerignore's
rules are applied the way Docker applies them: patterns in order, the last match wins, `!`
lets a path back in, and a pattern that matches a folder matches everything below it.
"""

import os
import re
import sys
from typing import List, Optional, Tuple

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_FROM = re.compile(r"^FROM\s+(\S+)(?:\s+AS\s+(\S+))?\s*$", re.IGNORECASE | re.MULTILINE)


def _pattern_regex(pattern: str) -> "re.Pattern[str]":
  """A .dockerignore pattern -> a regex over slash-separated relative paths."""
  out, i = "", 0
  pattern = pattern.strip("/")
  while i < len(pattern):
    if pattern.startswith("**/", i):
      out, i = out + "(?:.*/)?", i + 3
    elif pattern.startswith("**", i):
      out, i = out + ".*", i + 2
    elif pattern[i] == "*":
      out, i = out + "[^/]*", i + 1
    elif pattern[i] == "?":
      out, i = out + "[^/]", i + 1
    else:
      out, i = out + re.escape(pattern[i]), i + 1
  return re.compile("^%s$" % out)


def ignore_rules(root: str = ROOT) -> List[Tuple[bool, "re.Pattern[str]"]]:
  """(is_exception, regex) per line of root/.dockerignore, in order."""
  rules = []
  with open(os.path.join(root, ".dockerignore"), encoding="utf-8") as handle:
    for line in handle:
      line = line.strip()
      if line and not line.startswith("#"):
        exception = line.startswith("!")
        rules.append((exception, _pattern_regex(line.lstrip("!").strip())))
  return rules


def is_ignored(path: str, rules) -> bool:
  """Whether `path` (relative, with slashes) is left out of the context."""
  parts = path.split("/")
  prefixes = ["/".join(parts[:n]) for n in range(1, len(parts) + 1)]
  ignored = False
  for exception, regex in rules:
    if any(regex.match(prefix) for prefix in prefixes):
      ignored = not exception
  return ignored


def build_context(root: str = ROOT) -> List[str]:
  """Every file under root that `docker build` would send, relative, sorted."""
  rules = ignore_rules(root)
  found = []
  for dirpath, dirnames, files in os.walk(root):
    rel_dir = os.path.relpath(dirpath, root).replace(os.sep, "/")
    dirnames[:] = [d for d in dirnames if d not in (".git", ".venv")]  # huge, and ignored anyway
    for name in files:
      rel = name if rel_dir == "." else "%s/%s" % (rel_dir, name)
      if not is_ignored(rel, rules):
        found.append(rel)
  return sorted(found)


def base_images(root: str = ROOT) -> List[Tuple[str, Optional[str]]]:
  """(image, stage name) of each FROM of the Dockerfile, build args resolved to their defaults."""
  with open(os.path.join(root, "Dockerfile"), encoding="utf-8") as handle:
    text = handle.read()
  defaults = dict(re.findall(r"^ARG\s+(\w+)=(\S+)", text, re.MULTILINE))
  return [(re.sub(r"\$\{(\w+)\}", lambda m: defaults.get(m.group(1), m.group(0)), image), stage)
          for image, stage in _FROM.findall(text)]


def main() -> int:
  for path in build_context():
    print(path)
  print("base images: %s" % ", ".join(image for image, _ in base_images()), file=sys.stderr)
  return 0


if __name__ == "__main__":
  sys.exit(main())
