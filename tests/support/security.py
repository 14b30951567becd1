"""What the security tests (issue 4) share: the session's known secrets and ids, the
`needs_patch` marker, a fake Secret Manager, a work item, and an HTTP handler that lies
about its size.

Tests marked `needs_patch` check changes to files owned by others (listed in the issue 4
report); they are strict xfails until those patches land.
"""

import asyncio
import os

import pytest
from aiohttp import web

from transforms.core.records import SourceEvent, WorkItem

KEK_ENV = "VINE_MIGRATION_SECURITY_TEST_KEK"
# Known values, made per test session so that no fixed string can pass by accident.
TOKEN = "tok-" + os.urandom(16).hex()
KEK = os.urandom(32)
UID = "0123456789abcdef0123456789abcdef"
VINE_ID = "bqJ5A2xW6Ke"
OPENVINE_ID = "1751085897568-0fd41442"
CDN = "https://cdn.divine.video"
SECRET_NAME = "projects/p1/secrets/migration-token/versions/3"
# After applying the patches of the issue 4 report, set this to True.
PATCHES_APPLIED = True
needs_patch = pytest.mark.xfail(not PATCHES_APPLIED, strict=True,
                                reason="needs a patch from the issue 4 report")


class FakeSecretManager:
  """Secret Manager's access_secret_version: answers `data` or raises `error`; records names.

  The answer's `name` is the version asked for, with `latest` (or any alias) resolved
  to `current` (the newest version number), as Secret Manager answers.
  """

  def __init__(self, data=None, error=None, current=3):
    self.data, self.error, self.names, self.current = data, error, [], current

  def access_secret_version(self, name):
    self.names.append(name)
    if self.error:
      raise self.error
    base, _, version = name.rpartition("/versions/")

    class Payload:
      data = self.data

    class Response:
      payload = Payload

    Response.name = "%s/versions/%s" % (base, version if version.isdigit() else self.current)

    return Response


def work_item(thumbnail):
  """A work item of VINE_ID migrated to UID, with the given thumbnail URL."""
  event = {"id": "e" * 64, "pubkey": "p" * 64, "created_at": 1, "kind": 32222, "tags": [],
           "content": "", "sig": "s" * 128}
  return WorkItem(vine_id=VINE_ID, source=SourceEvent(event=event, vine_id=VINE_ID),
                  migration={"uid": UID, "thumbnail": thumbnail})


def declared_but_never_sent(size, content_type):
  """Declares a huge Content-Length, sends 1 KB, then holds the connection open."""
  async def handler(request):
    resp = web.StreamResponse(status=200, headers={"Content-Length": str(size),
                                                   "Content-Type": content_type})
    await resp.prepare(request)
    await resp.write(b"{" * 1024)
    await asyncio.sleep(20)  # cancelled by the runner's cleanup (shutdown_timeout)
    return resp
  return handler
