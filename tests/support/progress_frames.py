"""A fake terminal for the progress display, and the frames read back from what it drew."""

import io
import re

from rich.console import Console

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
ROW = re.compile(r"^(read|migrated|published|skipped|dead-lettered|finished)\s+(\d+)", re.M)


def terminal_console(width=100):
  """A console that believes it is a terminal, drawing into a StringIO without colour."""
  return Console(file=io.StringIO(), force_terminal=True, width=width, color_system=None)


def frames_of(text):
  """Each frame the display drew, as {row label: count}, in order."""
  frames = []
  for chunk in ANSI.sub("", text).split("vine-migration  ")[1:]:
    rows = {label: int(n) for label, n in ROW.findall(chunk)}
    if len(rows) == 6:
      frames.append(rows)
  return frames
