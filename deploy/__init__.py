"""Deployment files: the flex template's metadata and launcher, the worker image's context.

Never shipped to workers (setup.py packages only pipeline and transforms); the image copies
the folder for the flex template launcher (deploy/flex_main.py).
"""
