"""The pipeline's command line: one PipelineOptions subclass, and its validation.

Secrets are never options: the API token comes only from the environment
(CF_STREAM_MIGRATION_TOKEN) or from Secret Manager (--token-secret holds the
secret's name), so it never reaches logs, job parameters or the pickled graph.
URLs carrying credentials are refused. Validation runs before the pipeline is
built and names the flag.
"""

import argparse
import ipaddress
import os
from typing import List
from urllib.parse import urlsplit

from apache_beam.options.pipeline_options import (
  PipelineOptions,
)

from transforms.clients.secrets import TOKEN_ENV_VAR
from transforms.core.records import KIND_32222, KIND_34236, KIND_BOTH

DEFAULT_CDN = "https://cdn.divine.video"
MODE_MIGRATE = "migrate"
MODE_REPLAY = "replay"


class ConfigError(ValueError):
  """Bad or missing configuration; the message names the flag or variable."""


# The groups of `python -m pipeline.main --help`, in the order shown: every flag is in
# exactly one (a flag added without a group fails at once, see _Grouped).
HELP_GROUPS = (
    ("inputs", "where vines, events and keys come from",
     ("--relays", "--rows", "--bigquery-project", "--bigquery-dataset", "--events-file",
      "--keys-db", "--kek", "--page-size", "--test")),
    ("migration", "the migration API and the thumbnails",
     ("--migration-api", "--cdn-base", "--api-limit", "--retry-attempts",
      "--retry-base-delay", "--api-timeout", "--force-remigrate", "--require-blurhash")),
    ("verification", "media URLs checked on the CDN before they are published",
     ("--no-verify-urls",)),
    ("publishing", "what is published, and where",
     ("--event-kind", "--publish-limit", "--min-relays", "--force-republish")),
    ("outputs", "what a run leaves behind",
     ("--output-dir", "--run-id", "--no-progress", "--notify-url",
      "--notify-every-dead-letters")),
    ("modes", "migrate or replay, and local workers",
     ("--mode", "--replay-from", "--replay-filter", "--workers")),
    ("streaming", "with Beam's --streaming flag",
     ("--since", "--stream-state-ttl-days", "--lookup-batch-size", "--lookup-max-wait")),
    ("Dataflow", "the project's flags for a job on Google Cloud (Beam's own: below)",
     ("--token-secret", "--bigquery-temp-dataset", "--dead-letter-table", "--results-table")),
)
HELP_EPILOG = """Beam's own flags are accepted alongside: --runner (DirectRunner by default, DataflowRunner),
--streaming, --project, --region, --temp_location, --staging_location, --job_name,
--max_num_workers, --worker_machine_type, --service_account_email, --setup_file and
--dry_run=True (build the job offline and print the plan). They are documented at
https://cloud.google.com/dataflow/docs/reference/pipeline-options; run_dataflow.sh sets the
ones a Dataflow job needs (./run_dataflow.sh --help, docs/dataflow.md). The API token is
never a flag: env CF_STREAM_MIGRATION_TOKEN, or --token-secret on Dataflow."""


class _Grouped:
  """Adds each flag of MigrationOptions to its --help group (HELP_GROUPS) of `parser`."""

  def __init__(self, parser):
    self._group_of = {}
    for title, description, flags in HELP_GROUPS:
      group = parser.add_argument_group(title, description)
      self._group_of.update((flag, group) for flag in flags)

  def add_argument(self, flag, *args, **kwargs):
    return self._group_of[flag].add_argument(flag, *args, **kwargs)


def help_text() -> str:
  """What `python -m pipeline.main --help` prints: every project flag, grouped."""
  parser = argparse.ArgumentParser(
      prog="python -m pipeline.main", usage="%(prog)s [project flags] [Beam's flags]",
      epilog=HELP_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
      description="Migrates archived Vine videos to Cloudflare Stream and republishes their\n"
      "Nostr events (README.md). A default named \"env X\" comes from that variable.")
  MigrationOptions._add_argparse_args(parser)  # pylint: disable=protected-access
  return parser.format_help()


class MigrationOptions(PipelineOptions):
  """Flags of vine-migration (Beam's own flags are accepted alongside)."""

  @classmethod
  def _add_argparse_args(cls, parser):
    parser = _Grouped(parser)
    parser.add_argument("--mode", default=MODE_MIGRATE, choices=(MODE_MIGRATE, MODE_REPLAY),
                        help="migrate (default): the whole migration. replay: run dead letters "
                        "(--replay-from) through the stages again from the stage that failed.")
    parser.add_argument("--replay-from", dest="replay_from", default="",
                        help="Replay mode: dead letters to replay, a local NDJSON glob (e.g. "
                        "out/RUN/dead_letters.ndjson) or bq:PROJECT:DATASET.TABLE.")
    parser.add_argument("--replay-filter", dest="replay_filter", default="",
                        help="Replay mode: run_id=..,stage=a|b,error_class=..,since=ISO,until=ISO "
                        "(keys ANDed, values of one key ORed with |). Default: every dead letter.")
    parser.add_argument("--since", type=int, default=0,
                        help="Streaming: unix seconds to subscribe from (inclusive). Default: one "
                        "hour before the start. Set it to the backfill's start to miss nothing.")
    parser.add_argument("--stream-state-ttl-days", dest="stream_state_ttl_days", type=int,
                        default=14,
                        help="Streaming: days the newest version seen per (pubkey, d) is kept "
                        "after it was last replaced (default 14); then the state is cleared.")
    parser.add_argument("--lookup-batch-size", dest="lookup_batch_size", type=int, default=200,
                        help="Streaming: vine ids per metadata query at most (default 200).")
    parser.add_argument("--lookup-max-wait", dest="lookup_max_wait", type=int, default=5,
                        help="Streaming: seconds an id waits at most for its metadata query's "
                        "batch to fill (default 5).")
    parser.add_argument("--relays", default=os.environ.get("NOSTR_RELAYS", ""),
                        help="Comma-separated relay URLs to read from and publish to "
                        "(wss://, or ws:// on loopback). Default: env NOSTR_RELAYS.")
    parser.add_argument("--rows", default=None,
                        help="Local NDJSON file(s) of metadata rows (glob allowed). "
                        "Absent: query BigQuery (--bigquery-project, --bigquery-dataset).")
    parser.add_argument("--bigquery-project", dest="bigquery_project",
                        default=os.environ.get("BIGQUERY_PROJECT_ID", ""),
                        help="Project of the Vine metadata tables (posts_with_archived_videos, "
                        "vine_posts), read when --rows is absent. Default: env "
                        "BIGQUERY_PROJECT_ID.")
    parser.add_argument("--bigquery-dataset", dest="bigquery_dataset",
                        default=os.environ.get("BIGQUERY_DATASET_ID", ""),
                        help="Dataset of the Vine metadata tables, read when --rows is absent. "
                        "Default: env BIGQUERY_DATASET_ID.")
    parser.add_argument("--bigquery-temp-dataset", dest="bigquery_temp_dataset",
                        default=os.environ.get("BIGQUERY_TEMP_DATASET", ""),
                        help="Existing dataset PROJECT:DATASET for the rows query's temporary "
                        "result table (in the location of the Vine tables). Empty: Beam creates "
                        "a temporary dataset, which needs bigquery.datasets.create. Default: env "
                        "BIGQUERY_TEMP_DATASET.")
    parser.add_argument("--events-file", dest="events_file", default=None,
                        help="Extra events as NDJSON (e.g. a relay export), read beside the "
                        "relays and verified and de-duplicated the same way.")
    parser.add_argument("--migration-api", dest="migration_api",
                        default=os.environ.get("CF_STREAM_MIGRATION_API", ""),
                        help="Base URL of the migration API. Default: env "
                        "CF_STREAM_MIGRATION_API. The token is read from env %s or from "
                        "--token-secret, never from a flag value." % TOKEN_ENV_VAR)
    parser.add_argument("--token-secret", dest="token_secret",
                        default=os.environ.get("TOKEN_SECRET", ""),
                        help="Secret Manager version holding the migration API token, "
                        "[gcp-secret:]projects/P/secrets/S/versions/V: a name, never the token. "
                        "Read by the workers in setup(); absent: env %s. Default: env "
                        "TOKEN_SECRET." % TOKEN_ENV_VAR)
    parser.add_argument("--cdn-base", dest="cdn_base",
                        default=os.environ.get("CDN_BASE", DEFAULT_CDN),
                        help="CDN origin for URL templates and the only host thumbnails are "
                        "fetched from (default %s)." % DEFAULT_CDN)
    parser.add_argument("--keys-db", dest="keys_db", default=os.environ.get("MIGRATION_DB", ""),
                        help="SQLite keys database (table user_migrations). Default: env "
                        "MIGRATION_DB.")
    parser.add_argument("--kek", default=os.environ.get("MIGRATION_KEK_SPEC", ""),
                        help="Where the key-encryption key of an encrypted keys database comes "
                        "from: env:NAME, file:PATH, gcp-secret:projects/P/secrets/S/versions/V or "
                        "gcp-kms:KEYNAME:WRAPPED_KEK_PATH. A reference, never the key itself. "
                        "Default: env MIGRATION_KEK_SPEC.")
    parser.add_argument("--dead-letter-table", dest="dead_letter_table",
                        default=os.environ.get("DEAD_LETTER_TABLE", ""),
                        help="BigQuery table PROJECT:DATASET.TABLE for dead letters (created if "
                        "absent, appended to; the dataset must exist). Empty: local files only.")
    parser.add_argument("--results-table", dest="results_table",
                        default=os.environ.get("RESULTS_TABLE", ""),
                        help="BigQuery table PROJECT:DATASET.TABLE, one row per published vine "
                        "(created if absent). Empty: local files only.")
    parser.add_argument("--output-dir", dest="output_dir", default="out",
                        help="Directory for dead letters, results, monitor log and summary "
                        "(a sub-directory per run id).")
    parser.add_argument("--api-limit", dest="api_limit", type=int, default=20,
                        help="Migration API calls in flight at most, across the whole job whatever "
                        "the runner does: the work is keyed into this many groups, each "
                        "one call at a time (default 20).")
    parser.add_argument("--publish-limit", dest="publish_limit", type=int, default=200,
                        help="Events in flight per relay at most, across the whole job "
                        "(default 200).")
    parser.add_argument("--workers", type=int, default=1,
                        help="Local worker processes (DirectRunner multi_processing when > 1).")
    parser.add_argument("--min-relays", dest="min_relays", type=int, default=0,
                        help="A vine counts as published when this many relays accepted it "
                        "(default 0 = every configured relay).")
    parser.add_argument("--force-remigrate", dest="force_remigrate", action="store_true",
                        help="Call the migration API even for events that carry our migration "
                        "tags.")
    parser.add_argument("--force-republish", dest="force_republish", action="store_true",
                        help="Publish a new version even when nothing in the event changed.")
    parser.add_argument("--require-blurhash", dest="require_blurhash", action="store_true",
                        help="Dead-letter a vine whose thumbnail cannot be hashed instead of "
                        "publishing it without a blurhash.")
    parser.add_argument("--no-verify-urls", dest="no_verify_urls", action="store_true",
                        help="Publish the media URLs without checking them on the CDN (they "
                        "are checked by default: only URLs answering 200 with a media type "
                        "are published, docs/stages.md).")
    parser.add_argument("--test", dest="test_mode", action="store_true",
                        help="Test mode: only the first page (500 events) of each relay; rows of "
                        "vines without a read event are not judged.")
    parser.add_argument("--run-id", dest="run_id", default="",
                        help="Run id stamped on dead letters and results (default: generated).")
    parser.add_argument("--retry-attempts", dest="retry_attempts", type=int, default=5,
                        help="Migration API attempts per vine (default 5).")
    parser.add_argument("--retry-base-delay", dest="retry_base_delay", type=float, default=2.0,
                        help="First backoff delay in seconds; doubles per attempt (default 2).")
    parser.add_argument("--api-timeout", dest="api_timeout", type=float, default=60.0,
                        help="Seconds per migration API request (default 60).")
    parser.add_argument("--page-size", dest="page_size", type=int, default=500,
                        help="Events per relay page when reading (default 500).")
    parser.add_argument("--event-kind", dest="event_kind", default=KIND_32222,
                        choices=(KIND_32222, KIND_34236, KIND_BOTH),
                        help="What to publish per vine: 32222 (default, the seed's kind, "
                        "replacing the original event), 34236 (NIP-71 short video, what current "
                        "divine.video clients read; a second address, same key and d) or both "
                        "(published together, counted as one published vine).")
    parser.add_argument("--notify-url", dest="notify_url", action="append", default=None,
                        help="Webhook to POST to when the run finishes, stops, or its "
                        "configuration is refused (repeatable; a Slack webhook gets Slack's "
                        "text; docs/operating.md). Default: env NOTIFY_URLS, comma-separated.")
    parser.add_argument("--notify-every-dead-letters", dest="notify_every_dead_letters",
                        type=int, default=0,
                        help="Also notify each time the dead letters pass a multiple of N "
                        "(local runs in one process). Default 0: only at the end.")
    parser.add_argument("--no-progress", dest="no_progress", action="store_true",
                        help="No live progress display (it is also off when stderr is not a "
                        "terminal).")


def split_relays(value: str) -> List[str]:
  return [r.strip() for r in (value or "").split(",") if r.strip()]


def is_loopback(host: str) -> bool:
  if host == "localhost":
    return True
  try:
    return ipaddress.ip_address(host).is_loopback
  except ValueError:
    return False


def _check_authority(flag: str, url: str, parts) -> None:
  """Refuses credentials in a URL (they would be logged) and bad ports; never echoes them."""
  if "@" in parts.netloc:
    raise ConfigError("%s: a URL must not carry credentials (user:password@)" % flag)
  try:
    _ = parts.port  # raises ValueError on a bad port
  except ValueError:
    raise ConfigError("%s: %r has an invalid port" % (flag, url)) from None


def check_relay_url(url: str) -> str:
  parts = urlsplit(url)
  _check_authority("--relays", url, parts)
  if parts.scheme == "wss" and parts.hostname:
    return url
  if parts.scheme == "ws" and parts.hostname and is_loopback(parts.hostname):
    return url
  raise ConfigError("--relays: %r must be wss:// (ws:// only on loopback)" % url)


def check_http_url(flag: str, url: str) -> str:
  parts = urlsplit(url or "")
  _check_authority(flag, url, parts)
  if parts.scheme not in ("http", "https") or not parts.hostname:
    raise ConfigError("%s: %r is not an http(s) URL" % (flag, url))
  if parts.scheme == "http" and not is_loopback(parts.hostname):
    raise ConfigError("%s: %r must use https (http only on loopback)" % (flag, url))
  return url.rstrip("/")


def _check_bigquery_source(opts: MigrationOptions) -> None:
  """Without --rows the metadata comes from BigQuery: both names set and usable in SQL."""
  from transforms.io.vine_rows import is_bigquery_identifier  # pylint: disable=import-outside-toplevel
  for flag, env, value in (("--bigquery-project", "BIGQUERY_PROJECT_ID", opts.bigquery_project),
                           ("--bigquery-dataset", "BIGQUERY_DATASET_ID", opts.bigquery_dataset)):
    if not value:
      raise ConfigError("%s: required when --rows is not given (or env %s)" % (flag, env))
    if not is_bigquery_identifier(value):
      raise ConfigError("%s: %r is not a valid BigQuery identifier" % (flag, value))


def _missing_file(path: str) -> str:
  """Why a path that must be a file is not one (pipeline/preflight.py checks the rest)."""
  return "is a folder, not a file" if os.path.isdir(path) else "does not exist"


def validate(opts: MigrationOptions, environ=os.environ) -> None:
  """Fails before the pipeline starts, naming the flag or variable at fault."""
  relays = split_relays(opts.relays)
  if not relays:
    raise ConfigError("--relays: at least one relay URL is required (or env NOSTR_RELAYS)")
  for url in relays:
    check_relay_url(url)
  if not opts.migration_api:
    raise ConfigError("--migration-api: required (or env CF_STREAM_MIGRATION_API)")
  check_http_url("--migration-api", opts.migration_api)
  check_http_url("--cdn-base", opts.cdn_base)
  if opts.token_secret:
    from transforms.clients.secrets import SecretError, check_secret_spec  # pylint: disable=import-outside-toplevel
    try:
      check_secret_spec(opts.token_secret, "--token-secret")
    except SecretError as exc:
      raise ConfigError(str(exc)) from None
  elif not environ.get(TOKEN_ENV_VAR):
    raise ConfigError("%s: the migration API token must be set in the environment (or name "
                      "a Secret Manager version with --token-secret)" % TOKEN_ENV_VAR)
  if not opts.keys_db:
    raise ConfigError("--keys-db: required (or env MIGRATION_DB)")
  if not opts.keys_db.startswith("gs://") and not os.path.isfile(opts.keys_db):
    raise ConfigError("--keys-db: %s %s" % (opts.keys_db, _missing_file(opts.keys_db)))
  if opts.kek and opts.kek.split(":", 1)[0] in ("env", "file"):
    from transforms.keys.crypto import KekError, load_kek  # pylint: disable=import-outside-toplevel
    try:
      load_kek(opts.kek)
    except KekError as exc:
      raise ConfigError("--kek: %s" % exc) from None
  from transforms.io.bigquery_tables import (  # pylint: disable=import-outside-toplevel
    DEAD_LETTER_TABLE_FLAG,
    RESULTS_TABLE_FLAG,
    parse_table_spec,
  )
  for flag, value in ((DEAD_LETTER_TABLE_FLAG, opts.dead_letter_table),
                      (RESULTS_TABLE_FLAG, opts.results_table)):
    if value:
      try:
        parse_table_spec(value, flag)
      except ValueError as exc:
        raise ConfigError(str(exc)) from None
  if opts.bigquery_temp_dataset:
    from transforms.io.vine_rows import temp_dataset_reference  # pylint: disable=import-outside-toplevel
    try:
      temp_dataset_reference(opts.bigquery_temp_dataset)
    except ValueError as exc:
      raise ConfigError(str(exc)) from None
  from pipeline.notify import notify_urls, register_secrets  # pylint: disable=import-outside-toplevel
  for url in notify_urls(opts):
    check_http_url("--notify-url", url)
  register_secrets(notify_urls(opts))  # a webhook URL holds a credential: never in a log
  if opts.events_file and not os.path.isfile(opts.events_file):
    raise ConfigError("--events-file: %s %s" % (opts.events_file,
                                                 _missing_file(opts.events_file)))
  if opts.mode == MODE_REPLAY:
    from transforms.stages.replay import ReplayFilterError, parse_replay_filter  # pylint: disable=import-outside-toplevel
    if not opts.replay_from:
      raise ConfigError("--replay-from: required with --mode replay")
    if not opts.replay_from.startswith("bq:"):
      import glob  # pylint: disable=import-outside-toplevel
      if not glob.glob(opts.replay_from):
        raise ConfigError("--replay-from: no file matches %s" % opts.replay_from)
    try:
      parse_replay_filter(opts.replay_filter)
    except ReplayFilterError as exc:
      raise ConfigError(str(exc)) from None
  elif opts.rows is None:
    _check_bigquery_source(opts)
  else:
    import glob  # pylint: disable=import-outside-toplevel
    if not glob.glob(opts.rows):
      raise ConfigError("--rows: no file matches %s" % opts.rows)
  for flag, value, low in (("--api-limit", opts.api_limit, 1),
                           ("--publish-limit", opts.publish_limit, 1),
                           ("--workers", opts.workers, 1),
                           ("--min-relays", opts.min_relays, 0),
                           ("--retry-attempts", opts.retry_attempts, 1),
                           ("--page-size", opts.page_size, 1),
                           ("--stream-state-ttl-days", opts.stream_state_ttl_days, 1),
                           ("--lookup-batch-size", opts.lookup_batch_size, 1),
                           ("--lookup-max-wait", opts.lookup_max_wait, 1),
                           ("--notify-every-dead-letters", opts.notify_every_dead_letters, 0)):
    if value < low:
      raise ConfigError("%s: must be >= %d (got %d)" % (flag, low, value))
  if opts.min_relays > len(relays):
    raise ConfigError("--min-relays: %d is more than the %d configured relays"
                      % (opts.min_relays, len(relays)))
  if opts.retry_base_delay < 0 or opts.api_timeout <= 0:
    raise ConfigError("--retry-base-delay must be >= 0 and --api-timeout > 0")
