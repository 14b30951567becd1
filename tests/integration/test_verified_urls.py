"""Verified URLs and updates without loss, end to end against the emulator's real CDN mode.

Two full runs on the shared `stack` (issue 15, items 2 and 5):

1. a first run publishing both kinds: every URL any event carries answers 200 on the
   emulator's CDN (no 410 manifest, no placeholder thumbnail), and is on --cdn-base except
   the OpenVine source fallback;
2. a second run whose rows have NULL timestamps and likes for some vines: those vines keep
   their published values, and the run publishes nothing.
"""

import json

import pytest
import requests

from tests.support.run_checks import assert_balanced, d_tag
from tests.support.runs import run_pipeline
from transforms.core.ids import OPENVINE_MEDIA_URL
from transforms.nostr.event import first_tag_value

pytestmark = pytest.mark.integration

KINDS = (32222, 34236)
OPENVINE = OPENVINE_MEDIA_URL.split("%s")[0]


MEDIA_TAGS = ("url", "streaming", "r", "thumb", "preview")
IMETA_URLS = ("url", "image", "fallback")


def event_urls(event):
  """Every media URL an event carries: the media tags and imeta url/image/fallback entries."""
  urls = []
  for tag in event["tags"]:
    if tag[0] in MEDIA_TAGS and len(tag) >= 2:
      urls.append(tag[1])
    if tag[0] == "imeta":
      urls += [entry.split(" ", 1)[1] for entry in tag[1:]
               if " " in entry and entry.split(" ", 1)[0] in IMETA_URLS]
  return urls


def relay_state(stack):
  return {(e["kind"], e["pubkey"], d_tag(e)): e
          for kind in KINDS for e in stack.relay_events(kind=kind)}


@pytest.fixture(scope="module")
def first(stack, tmp_path_factory):
  code, _, summary = run_pipeline(stack, tmp_path_factory.mktemp("out"),
                                  ["--event-kind", "both"])
  assert_balanced(code, summary)
  return summary, relay_state(stack)


def test_every_published_url_works_on_the_cdn(stack, first):
  summary, events = first
  assert summary["published"] == stack.manifest["expected_published"]
  migrated = [e for e in events.values() if first_tag_value(e["tags"], "migration")]
  assert len(migrated) >= 2 * stack.manifest["expected_published"]
  checked = set()
  for event in migrated:
    urls = event_urls(event)
    assert first_tag_value(event["tags"], "url") or event["kind"] == 34236
    for url in urls:
      if url.startswith(OPENVINE):
        continue  # the imeta fallback to the source: the one URL off the CDN
      assert url.startswith(stack.emulator.url + "/"), url
      assert "/manifest/" not in url, url
      checked.add(url)
  assert checked
  for url in sorted(checked):
    answer = requests.get(url, timeout=10)
    assert answer.status_code == 200, (url, answer.status_code)
    assert answer.headers["Content-Type"].split(";")[0] not in ("image/svg+xml",
                                                                "application/json"), url
  counters = summary["counters"]
  assert counters["urls_checked"] >= len(checked)


def test_null_row_values_keep_the_previous_ones_and_nothing_is_republished(stack, first,
                                                                         tmp_path):
  _, before = first
  published = {key[2] for key, e in before.items()
               if key[0] == 32222 and first_tag_value(e["tags"], "likes")
               and first_tag_value(e["tags"], "published_at")}
  nulled = sorted(published)[:3]
  assert nulled
  rows = []
  with open(stack.path("rows.ndjson"), encoding="utf-8") as f:
    for line in f:
      row = json.loads(line)
      if row.get("vineId") in nulled:
        row.update(created_timestamp=None, likes=None)
      rows.append(json.dumps(row))
  path = tmp_path / "rows.ndjson"
  path.write_text("\n".join(rows) + "\n", encoding="utf-8")
  code, _, summary = run_pipeline(stack, tmp_path / "out",
                                  ["--event-kind", "both", "--rows", str(path)])
  assert_balanced(code, summary)
  assert summary["published"] == 0
  assert summary["counters"]["values_kept_from_previous"] >= 2 * 2 * len(nulled)
  after = relay_state(stack)
  assert {k: e["id"] for k, e in after.items()} == {k: e["id"] for k, e in before.items()}
  for key, event in after.items():
    if key[2] in nulled:
      for name in ("published_at", "likes"):
        assert first_tag_value(event["tags"], name) == first_tag_value(before[key]["tags"], name)
