"""Where the repository is: subprocesses of the tests run there, with it on PYTHONPATH."""

import os

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
