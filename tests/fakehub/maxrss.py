#!/usr/bin/env python3
"""maxrss.py OUT_FILE CMD ARGS...: runs CMD, writes its peak resident set size in KiB
(getrusage of the child) to OUT_FILE, and exits with CMD's exit status."""
import resource
import subprocess
import sys

status = subprocess.call(sys.argv[2:])
with open(sys.argv[1], "w") as f:
    f.write(str(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss))
sys.exit(status)
