"""The flex template's metadata, generated from the flags of pipeline/options.py.

`python -m deploy.template` writes deploy/flex-template-metadata.json; `--check` exits 1 when
the file is not what the flags give (a flag added, renamed or re-documented without
regenerating). Every project flag is a parameter, named by its argparse `dest` (letters and
underscores, what Dataflow's parameter names accept; deploy/flex_main.py turns them back into
flags). Secrets are never parameters: the API token and the KEK are given by reference only
(`token_secret`, `kek`), and their regexes accept Secret Manager or KMS names, never a value.
"""

import argparse
import json
import os
import sys
from typing import Dict, List

from pipeline.options import HELP_GROUPS, MigrationOptions

METADATA_PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)),
                             "flex-template-metadata.json")
NAME = "vine-migration"
DESCRIPTION = ("Migrates archived Vine videos to Cloudflare Stream and republishes their Nostr "
               "events (batch, --streaming, or --mode replay). Run with the parameter "
               "sdk_container_image set to the same image, so workers install nothing. A default "
               "named \"env X\" does not apply here: the launcher has no such variables.")

# Needed by every Dataflow run; the flex launcher has none of the environment variables the
# flags otherwise default to. (bigquery_project/dataset are needed unless rows or a replay.)
REQUIRED = ("relays", "migration_api", "keys_db", "token_secret", "output_dir")

_SECRET_VERSION = r"projects/[^/\s]+/secrets/[^/\s]+/versions/([0-9]+|latest)"
_TABLE = r"[A-Za-z0-9_.:-]+:[A-Za-z0-9_]+\.[A-Za-z0-9_$-]+"
_IDENT = r"[A-Za-z0-9_-]{1,1024}"
# Beyond what the type of a flag gives: what a value must look like on Dataflow.
REGEXES: Dict[str, str] = {
    "relays": r"^wss://[^,@\s]+(,wss://[^,@\s]+)*$",
    "migration_api": r"^https://[^@\s/]+(/[^@\s]*)?$",
    "cdn_base": r"^https://[^@\s/]+(/[^@\s]*)?$",
    "keys_db": r"^gs://[^\s]+$",
    "output_dir": r"^gs://[^\s]+$",
    "rows": r"^gs://[^\s]+$",
    "events_file": r"^gs://[^\s]+$",
    "replay_from": r"^(gs://[^\s]+|bq:%s)$" % _TABLE,
    "token_secret": r"^(gcp-secret:)?%s$" % _SECRET_VERSION,
    "kek": r"^(gcp-secret:%s|gcp-kms:projects/[^/\s]+/locations/[^/\s]+/keyRings/[^/\s]+/"
           r"cryptoKeys/[^:\s]+:gs://[^\s]+)$" % _SECRET_VERSION,
    "dead_letter_table": r"^%s$" % _TABLE,
    "results_table": r"^%s$" % _TABLE,
    "bigquery_project": r"^%s$" % _IDENT,
    "bigquery_dataset": r"^%s$" % _IDENT,
    "bigquery_temp_dataset": r"^%s[:.]%s$" % (_IDENT, _IDENT),
    "run_id": r"^[A-Za-z0-9_.-]{1,64}$",
}
_BY_TYPE = {int: r"^[0-9]+$", float: r"^[0-9]+(\.[0-9]+)?$"}
_BOOLEAN = r"^(true|false)$"


def flag_actions() -> List[argparse.Action]:
  """The argparse actions of every project flag, in the order options.py defines them."""
  parser = argparse.ArgumentParser(add_help=False)
  MigrationOptions._add_argparse_args(parser)  # pylint: disable=protected-access
  return [action for action in parser._actions if action.option_strings]  # pylint: disable=protected-access


def is_boolean(action: argparse.Action) -> bool:
  return isinstance(action, argparse._StoreTrueAction)  # pylint: disable=protected-access


def _group_of() -> Dict[str, str]:
  return {flag: title for title, _, flags in HELP_GROUPS for flag in flags}


def parameter(action: argparse.Action, group: str) -> Dict:
  """One parameter of the metadata: name, label, helpText, isOptional and its regexes."""
  flag = action.option_strings[0]
  help_text = " ".join((action.help or "").split())
  if is_boolean(action):
    help_text += " On the template: true or false."
  param = {"name": action.dest, "label": "%s (%s)" % (flag, group), "helpText": help_text,
           "isOptional": action.dest not in REQUIRED}
  regex = (REGEXES.get(action.dest) or (_BOOLEAN if is_boolean(action) else None)
           or ("^(%s)$" % "|".join(action.choices) if action.choices else None)
           or _BY_TYPE.get(action.type))
  if regex:
    param["regexes"] = [regex]
  return param


def metadata() -> Dict:
  groups = _group_of()
  return {"name": NAME, "description": DESCRIPTION,
          "parameters": [parameter(a, groups[a.option_strings[0]]) for a in flag_actions()]}


def render() -> str:
  return json.dumps(metadata(), indent=2, ensure_ascii=False) + "\n"


def main(argv=None) -> int:
  args = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
  args.add_argument("--check", action="store_true",
                    help="exit 1 when %s is stale instead of writing it" % METADATA_PATH)
  check = args.parse_args(argv).check
  text = render()
  if check:
    try:
      with open(METADATA_PATH, encoding="utf-8") as handle:
        current = handle.read()
    except FileNotFoundError:
      current = ""
    if current != text:
      print("%s is stale: run python -m deploy.template" % METADATA_PATH, file=sys.stderr)
      return 1
    print("%s matches the flags of pipeline/options.py" % METADATA_PATH)
    return 0
  with open(METADATA_PATH, "w", encoding="utf-8") as handle:
    handle.write(text)
  print("wrote %s (%d parameters)" % (METADATA_PATH, len(metadata()["parameters"])))
  return 0


if __name__ == "__main__":
  sys.exit(main())
