#!/usr/bin/env bash
# The MACE peer venv at <repo>/.peers/mace (idempotent; see peer_venv.sh).
set -euo pipefail
exec bash "$(dirname "${BASH_SOURCE[0]}")/peer_venv.sh" mace mace-torch "${MACE_VERSION:-0.3.16}"
