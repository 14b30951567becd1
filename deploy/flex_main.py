"""The flex template's entry point (FLEX_TEMPLATE_PYTHON_PY_FILE in the Dockerfile).

Dataflow's launcher calls it with every template parameter as `--<name>=<value>`, names being
the flags' argparse dests (deploy/template.py) and booleans `true` or `false`. This turns
them back into the flags of pipeline/options.py (`--api_limit=30` -> `--api-limit=30`,
`--force_remigrate=true` -> `--force-remigrate`, `=false` -> nothing), leaves Beam's own
options as they are, turns the live display off (no terminal) and runs pipeline.main.
"""

import os
import sys
from typing import List

# The launcher runs this file by path; its folder's parent holds pipeline/ and deploy/.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from deploy.template import flag_actions, is_boolean  # noqa: E402  pylint: disable=wrong-import-position


def to_flags(argv: List[str]) -> List[str]:
  """Template parameters -> pipeline flags; anything else passes through unchanged."""
  by_dest = {action.dest: action for action in flag_actions()}
  out = []
  for arg in argv:
    name, sep, value = arg[2:].partition("=") if arg.startswith("--") else ("", "", "")
    action = by_dest.get(name)
    if action is None or not sep:
      out.append(arg)
    elif is_boolean(action):
      if value.strip().lower() == "true":
        out.append(action.option_strings[0])
    else:
      out.append("%s=%s" % (action.option_strings[0], value))
  if "--no-progress" not in out:
    out.append("--no-progress")
  return out


def main() -> None:
  from pipeline import main as pipeline_main  # pylint: disable=import-outside-toplevel
  sys.exit(pipeline_main.run(to_flags(sys.argv[1:])))


if __name__ == "__main__":
  main()
