#!/usr/bin/env bash
# Refresh constraints.txt from .venv: every installed distribution at its exact version, prunekit itself left out.
# Run after a deliberate upgrade (pip install -U <pkg> in .venv), then run the tests and .ci/run before committing.
set -euo pipefail
cd "$(dirname "$0")/.."
{
  echo "# The exact versions CI tested: scripts/setup.sh installs with -c constraints.txt, so a fresh machine gets"
  echo "# them (a newer filelock once broke a test). Refresh: bash scripts/freeze.sh (see its header)."
  .venv/bin/python -m pip freeze --exclude-editable --exclude prunekit
} > constraints.txt
echo "constraints.txt: $(grep -vc '^#' constraints.txt) pinned distributions"
