#!/usr/bin/env bash
# Submits the same graph to Google Dataflow. Filled in by the Dataflow issue; for now it
# passes its arguments to the pipeline with DataflowRunner settings from the environment.
set -euo pipefail
cd "$(dirname "$0")"
source tools/ensure_venv.sh
: "${GCP_PROJECT:?set GCP_PROJECT}" "${GCP_REGION:?set GCP_REGION}" "${GCS_TEMP:?set GCS_TEMP (gs://...)}"
exec python -m pipeline.main \
  --runner DataflowRunner --project "$GCP_PROJECT" --region "$GCP_REGION" \
  --temp_location "$GCS_TEMP" --setup_file ./setup.py "$@"
