#!/usr/bin/env bash
# Headless Chromium for the HTML report test (tests/e2e.rs, tests/report_html.rs):
# Debian's `chromium` package. Idempotent; no prompts (CI=true, no stdin).
set -euo pipefail
if [ -x /usr/bin/chromium ]; then
  echo "70-chromium: /usr/bin/chromium is installed"
  exit 0
fi
export DEBIAN_FRONTEND=noninteractive
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo -n"
$SUDO apt-get update
$SUDO apt-get install -y --no-install-recommends chromium fonts-dejavu-core </dev/null
