#!/usr/bin/env bash
# Sourced by the two README commands: the virtual environment and the three services.
# shellcheck source=scripts/bootstrap.sh
source "$(dirname "${BASH_SOURCE[0]}")/bootstrap.sh"
# shellcheck source=scripts/services.sh
source "$(dirname "${BASH_SOURCE[0]}")/services.sh"

prepare_environment() {
  bootstrap_venv
  ensure_all_services
}
