"""Package definition for vine-migration; also what Dataflow workers install.

`install_requires` is what the workers run, nothing more: every package there is imported by
`transforms/` (or is Beam). The extras hold the rest: `launcher` for the machine (or flex
template container) that builds and submits the job, `local` for the embedded local stack
(`devstack/`, never shipped), `test` for the test suite. docs/packages.md says why each one is
where it is; tests/unit/deploy/test_packages.py keeps the split honest.
"""

import setuptools

setuptools.setup(
    name="vine-migration",
    version="0.1.0",
    description=("Beam pipeline that migrates archived Vine videos from OpenVine to "
                 "Cloudflare Stream and republishes their Nostr events."),
    python_requires=">=3.11,<3.12",
    # Only the pipeline's code: devstack/, bench/, tests/ and deploy/ stay out of the workers.
    packages=setuptools.find_packages(include=["pipeline", "pipeline.*", "transforms", "transforms.*"]),
    install_requires=[
        "apache-beam[gcp]==2.77.0",
        "Pillow>=10.0",
        "numpy>=1.26",
        "websocket-client>=1.7",
        "coincurve>=20.0",
        "aiohttp>=3.9",
        "cryptography>=42.0",
    ],
    extras_require={
        "launcher": ["rich==15.0.0", "requests>=2.31"],
        "local": ["requests>=2.31", "nostr-sdk==0.45.1"],
        "test": ["pytest>=8.0", "ruff>=0.5", "pynostr==0.7.0", "blurhash==1.1.5"],
    },
)
