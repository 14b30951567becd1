"""Package definition for vine-migration; also shipped to Dataflow workers with --setup_file."""

import setuptools

setuptools.setup(
    name="vine-migration",
    version="0.1.0",
    description=("Beam pipeline that migrates archived Vine videos from OpenVine to "
                 "Cloudflare Stream and republishes their Nostr events."),
    python_requires=">=3.11,<3.12",
    packages=setuptools.find_packages(include=["pipeline", "pipeline.*", "transforms", "transforms.*"]),
    install_requires=[
        "apache-beam[gcp]==2.77.0",
        "requests>=2.31",
        "blurhash==1.1.5",
        "Pillow>=10.0",
        "numpy>=1.26",
        "pynostr==0.7.0",
        "websocket-client>=1.7",
        "coincurve>=20.0",
        "aiohttp>=3.9",
        "cryptography>=42.0",
        "rich==15.0.0",
    ],
    extras_require={
        "test": ["pytest>=8.0", "nostr-sdk==0.45.1", "ruff>=0.5"],
    },
)
