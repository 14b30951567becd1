#!/usr/bin/env bash
# Submits the migration to Google Dataflow: the same graph as ./run_local.sh, DataflowRunner.
# Settings come from the environment (below) or as flags after the script name; any pipeline
# flag (see README "Command line", or python -m pipeline.main --help) may follow, e.g. --streaming, --mode replay, --test.
set -euo pipefail
cd "$(dirname "$0")"

usage() {
  cat <<'USAGE'
Usage: ./run_dataflow.sh [pipeline flags...]

Environment (required):
  GCP_PROJECT              project that runs the job            e.g. my-proj-123
  GCP_REGION               Dataflow region                      e.g. us-central1
  GCS_TEMP                 temp location                        e.g. gs://my-bucket/tmp
  NOSTR_RELAYS             relays, comma-separated (wss://)
  CF_STREAM_MIGRATION_API  migration API base URL
  MIGRATION_DB             keys database on GCS                 e.g. gs://my-bucket/keys.enc.db
  MIGRATION_KEK_SPEC       KEK of the encrypted keys database   e.g. gcp-secret:projects/P/secrets/kek/versions/latest
  TOKEN_SECRET             Secret Manager name of the API token e.g. projects/P/secrets/cf-token/versions/latest
  DEAD_LETTER_TABLE        BigQuery table for dead letters      e.g. my-proj-123:vine_migration.dead_letters
  BIGQUERY_PROJECT_ID, BIGQUERY_DATASET_ID   the Vine metadata (the seed's query); the
                           defaults of --bigquery-project and --bigquery-dataset

Environment (optional, defaults in brackets):
  GCS_STAGING              staging location [$GCS_TEMP/staging]
  DATAFLOW_SERVICE_ACCOUNT worker service account [project default]
  DATAFLOW_MACHINE_TYPE    worker machine type [n1-standard-2]
  DATAFLOW_MAX_WORKERS     autoscaling ceiling [10]
  DATAFLOW_JOB_NAME        job name [vine-migration-<timestamp>]
  RESULTS_TABLE            BigQuery results table [none]
  OUTPUT_DIR               gs:// directory for run outputs [$GCS_TEMP/runs]

Which events to publish: add --event-kind 32222|34236|both (default 32222; current
divine.video clients read only 34236, see README "Event kinds").
Dry run: add --dry_run=True. The job is built and translated offline (no network, nothing
submitted or written), the plan is printed (runner, job name, mode, steps, settings with
secrets shown only as "set", where outputs would go) and the script exits 0. Any value of
--dry_run, even False, is a dry run to Beam: leave the flag out to submit.
USAGE
}
case "${1:-}" in -h|--help) usage; exit 0;; esac

source tools/ensure_venv.sh
missing=()
for v in GCP_PROJECT GCP_REGION GCS_TEMP; do [ -n "${!v:-}" ] || missing+=("$v"); done
if [ ${#missing[@]} -gt 0 ]; then
  echo "run_dataflow.sh: set ${missing[*]} (see --help)" >&2; exit 2
fi

args=(
  --runner DataflowRunner
  --project "$GCP_PROJECT"
  --region "$GCP_REGION"
  --temp_location "$GCS_TEMP"
  --staging_location "${GCS_STAGING:-$GCS_TEMP/staging}"
  --job_name "${DATAFLOW_JOB_NAME:-vine-migration-$(date -u +%Y%m%d-%H%M%S)}"
  --worker_machine_type "${DATAFLOW_MACHINE_TYPE:-n1-standard-2}"
  --max_num_workers "${DATAFLOW_MAX_WORKERS:-10}"
  --setup_file ./setup.py
  --no_save_main_session
  --output-dir "${OUTPUT_DIR:-$GCS_TEMP/runs}"
)
[ -n "${DATAFLOW_SERVICE_ACCOUNT:-}" ] && args+=(--service_account_email "$DATAFLOW_SERVICE_ACCOUNT")
[ -n "${TOKEN_SECRET:-}" ] && args+=(--token-secret "$TOKEN_SECRET")
exec python -m pipeline.main "${args[@]}" "$@"
