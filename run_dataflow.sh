#!/usr/bin/env bash
# Submits the migration to Google Dataflow: the same graph as ./run_local.sh, DataflowRunner.
# Settings come from the environment (below) or as flags after the script name; any pipeline
# flag (see README "Command line", or python -m pipeline.main --help) may follow, e.g. --streaming, --mode replay, --test.
set -euo pipefail
cd "$(dirname "$0")"

usage() {
  cat <<'USAGE'
Usage: ./run_dataflow.sh [pipeline flags...]

Two ways to launch (docs/dataflow.md, "Launching"):

 1. From this checkout (this script). With WORKER_IMAGE set, workers start from that
    prebuilt image (the Dockerfile: Beam 2.77.0 / Python 3.11 SDK image, project installed;
    --sdk_container_image) and install nothing. Without it, workers pip-install setup.py's
    packages from PyPI at start-up (--setup_file), which needs internet access.
      docker build -t "$WORKER_IMAGE" . && docker push "$WORKER_IMAGE"
      WORKER_IMAGE=REGION-docker.pkg.dev/P/REPO/vine-migration:TAG ./run_dataflow.sh

 2. As a flex template, without a checkout: the same image is the launcher. Parameters are
    the flags' names with underscores (api_limit, token_secret, ...), booleans true/false;
    deploy/flex-template-metadata.json lists them (python -m deploy.template --check).
      gcloud dataflow flex-template build gs://BUCKET/templates/vine-migration.json \
        --image "$WORKER_IMAGE" --sdk-language PYTHON \
        --metadata-file deploy/flex-template-metadata.json
      gcloud dataflow flex-template run "vine-migration-$(date -u +%Y%m%d-%H%M%S)" \
        --template-file-gcs-location gs://BUCKET/templates/vine-migration.json \
        --region "$GCP_REGION" --max-workers 3 --worker-machine-type n1-standard-2 \
        --parameters '^~^sdk_container_image=IMAGE~relays=wss://a,wss://b~api_limit=100~...'
    ('^~^' makes '~' the separator, so a relay list keeps its commas.)

What the workers must reach: the migration API (CF_STREAM_MIGRATION_API), every relay
(wss://, port 443), the CDN (--cdn-base, thumbnails), and Google APIs (Secret Manager,
Cloud Storage, BigQuery). Either workers have public IPs (the default), or, with
DATAFLOW_NO_PUBLIC_IPS=1, their subnetwork has Cloud NAT for the three outside hosts and
Private Google Access for Google's. Without WORKER_IMAGE they also need PyPI.

Environment (required):
  GCP_PROJECT              project that runs the job            e.g. my-proj-123
  GCP_REGION               Dataflow region                      e.g. us-central1
  GCS_TEMP                 temp location                        e.g. gs://my-bucket/tmp
  NOSTR_RELAYS             relays, comma-separated (wss://)
  CF_STREAM_MIGRATION_API  migration API base URL
  MIGRATION_DB             keys database on GCS                 e.g. gs://my-bucket/keys.enc.db
  MIGRATION_KEK_SPEC       KEK of the encrypted keys database   e.g. gcp-secret:projects/P/secrets/kek/versions/3
  TOKEN_SECRET             Secret Manager name of the API token e.g. projects/P/secrets/cf-token/versions/2
  DEAD_LETTER_TABLE        BigQuery table for dead letters      e.g. my-proj-123:vine_migration.dead_letters
  BIGQUERY_PROJECT_ID, BIGQUERY_DATASET_ID   the Vine metadata (the seed's query); the
                           defaults of --bigquery-project and --bigquery-dataset

Environment (optional, defaults in brackets):
  WORKER_IMAGE             prebuilt worker image [none: workers install from PyPI]
  API_LIMIT                migration calls in flight, job-wide [100; docs/dataflow.md "Sizing"]
  DATAFLOW_MACHINE_TYPE    worker machine type [n1-standard-2]
  DATAFLOW_MAX_WORKERS     autoscaling ceiling [3; the API's latency, not the workers, sets the pace]
  BIGQUERY_TEMP_DATASET    existing PROJECT:DATASET for the rows query's result table
                           [none: Beam creates a temporary dataset, needs bigquery.datasets.create]
  DATAFLOW_NO_PUBLIC_IPS   1: workers without public IPs (needs Cloud NAT, see above) [0]
  DATAFLOW_SUBNETWORK      e.g. regions/us-central1/subnetworks/dataflow [the default network]
  GCS_STAGING              staging location [$GCS_TEMP/staging]
  DATAFLOW_SERVICE_ACCOUNT worker service account [project default]
  DATAFLOW_JOB_NAME        job name [vine-migration-<timestamp>]
  RESULTS_TABLE            BigQuery results table [none]
  OUTPUT_DIR               gs:// directory for run outputs [$GCS_TEMP/runs]
  DATAFLOW_PRINT_ARGS      1: print the command and exit (nothing installed or submitted) [0]

Which events to publish: add --event-kind 32222|34236|both (default 32222; current
divine.video clients read only 34236, see README "Event kinds").
Dry run: add --dry_run=True. The job is built and translated offline (no network, nothing
submitted or written), the plan is printed (runner, job name, mode, steps, settings with
secrets shown only as "set", where outputs would go) and the script exits 0. Any value of
--dry_run, even False, is a dry run to Beam: leave the flag out to submit.
USAGE
}
case "${1:-}" in -h|--help) usage; exit 0;; esac

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
  --max_num_workers "${DATAFLOW_MAX_WORKERS:-3}"
  --no_save_main_session
  --output-dir "${OUTPUT_DIR:-$GCS_TEMP/runs}"
  --api-limit "${API_LIMIT:-100}"
)
# A prebuilt image holds the code and its packages: staging setup.py too would make every
# worker reinstall them from PyPI at start-up.
if [ -n "${WORKER_IMAGE:-}" ]; then
  args+=(--sdk_container_image "$WORKER_IMAGE")
else
  args+=(--setup_file ./setup.py)
fi
[ "${DATAFLOW_NO_PUBLIC_IPS:-0}" = 1 ] && args+=(--no_use_public_ips)
[ -n "${DATAFLOW_SUBNETWORK:-}" ] && args+=(--subnetwork "$DATAFLOW_SUBNETWORK")
[ -n "${DATAFLOW_SERVICE_ACCOUNT:-}" ] && args+=(--service_account_email "$DATAFLOW_SERVICE_ACCOUNT")
[ -n "${TOKEN_SECRET:-}" ] && args+=(--token-secret "$TOKEN_SECRET")
# Flags given after the script name come last, so they win over the defaults above.
if [ "${DATAFLOW_PRINT_ARGS:-0}" = 1 ]; then
  printf '%q ' python -m pipeline.main "${args[@]}" "$@"; echo; exit 0
fi
source tools/ensure_venv.sh
exec python -m pipeline.main "${args[@]}" "$@"
