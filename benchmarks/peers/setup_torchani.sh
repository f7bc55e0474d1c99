#!/usr/bin/env bash
# The TorchANI peer venv at <repo>/.peers/torchani (idempotent; see peer_venv.sh).
set -euo pipefail
exec bash "$(dirname "${BASH_SOURCE[0]}")/peer_venv.sh" torchani torchani "${TORCHANI_VERSION:-2.9.0}"
