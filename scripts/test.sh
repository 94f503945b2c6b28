#!/usr/bin/env bash
# Set up (scripts/setup.sh) and run the whole test suite, slow end-to-end tests included.
# Extra arguments go to pytest, e.g. `bash scripts/test.sh -m "not slow"` for the fast part.
set -euo pipefail
# shellcheck source=scripts/preamble.sh
source "$(dirname "$0")/preamble.sh"
# The linter first (ruff.toml: pycodestyle, pyflakes, 120 columns, one layout): seconds, and it names the line.
python -m ruff check srpo_verl tests scripts
python -m ruff format --check srpo_verl tests scripts
python -m pytest tests -p no:cacheprovider "$@"
