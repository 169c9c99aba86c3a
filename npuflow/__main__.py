"""``python -m npuflow``: the console script's entry, which turns a Ctrl-C during the import into one line."""

from npuflow_launcher import run

run()
