# The worker image, and the flex template's launcher image: one image, so the job's graph is
# built with exactly the code and packages the workers run. Built from the repository root:
#   docker build -t REGION-docker.pkg.dev/PROJECT/REPO/vine-migration:TAG .
# Workers use it with --sdk_container_image (run_dataflow.sh: WORKER_IMAGE) and install
# nothing at start-up, so they need no PyPI access. No secret is in the image: the token and
# the KEK are read at run time from Secret Manager (docs/security.md). The .dockerignore lets
# in only setup.py, pipeline/, transforms/ and deploy/.

# The flex template launcher binary (used only when launched as a flex template).
ARG LAUNCHER_BASE=gcr.io/dataflow-templates-base/python311-template-launcher-base:latest
FROM ${LAUNCHER_BASE} AS launcher

# Beam's SDK container of the pinned Beam version (setup.py) and Python (3.11).
FROM apache/beam_python3.11_sdk:2.77.0

COPY --from=launcher /opt/google/dataflow/python_template_launcher /opt/google/dataflow/python_template_launcher

WORKDIR /template
COPY setup.py ./
COPY pipeline ./pipeline
COPY transforms ./transforms
COPY deploy ./deploy
# The workers' packages (install_requires) and the launcher's (rich); Beam itself is the
# image's own and stays at its version. The import check fails the build, not a worker.
RUN pip install --no-cache-dir ".[launcher]" \
 && python -c "import apache_beam, transforms.stages.publish, pipeline.main; assert apache_beam.__version__ == '2.77.0'"

# No FLEX_TEMPLATE_PYTHON_SETUP_FILE or _REQUIREMENTS_FILE: the packages are installed above,
# so the launcher stages nothing for the workers to install.
ENV FLEX_TEMPLATE_PYTHON_PY_FILE=/template/deploy/flex_main.py

ENTRYPOINT ["/opt/apache/beam/boot"]
