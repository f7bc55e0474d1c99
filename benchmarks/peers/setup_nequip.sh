#!/usr/bin/env bash
# The NequIP peer venv at <repo>/.peers/nequip (idempotent; see peer_venv.sh).
set -euo pipefail
exec bash "$(dirname "${BASH_SOURCE[0]}")/peer_venv.sh" nequip nequip "${NEQUIP_VERSION:-0.19.1}"
