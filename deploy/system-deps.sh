#!/usr/bin/env bash
# Install the Debian packages the test suite needs beyond Python: Chromium and its WebDriver, for the
# chat page's browser tests (tests/e2e/test_chat_page.py). Idempotent and quick when they are there.
#
#   bash deploy/system-deps.sh        # as root (CI runs it from tests/run.sh); otherwise it says what to install
set -euo pipefail

packages=(chromium chromium-driver)
# without recommends: no printer, GPU or notification daemons; the fonts are the one recommend wanted
extras=(fonts-liberation)

installed() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q "ok installed"; }

missing=()
for p in "${packages[@]}"; do
  installed "$p" || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ] && [ -x /usr/bin/chromium ] && [ -x /usr/bin/chromedriver ]; then
  exit 0
fi
[ ${#missing[@]} -eq 0 ] && missing=("${packages[@]}")  # packages there but the binaries are not: reinstall

if ! command -v apt-get >/dev/null 2>&1; then
  echo "the browser tests need Chromium and chromedriver (missing: ${missing[*]}); this is not a Debian" \
       "system, so install them yourself and set CITELINE_CHROMIUM / CITELINE_CHROMEDRIVER" >&2
  exit 1
fi
if [ "$(id -u)" -ne 0 ]; then
  echo "the browser tests need these Debian packages: ${missing[*]}" >&2
  echo "install them as root:  sudo apt-get update && sudo apt-get install -y --no-install-recommends" \
       "${missing[*]} ${extras[*]}" >&2
  exit 1
fi

echo "==> installing ${missing[*]} with apt-get (for the browser tests)" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -q >&2
apt-get install -y -q --no-install-recommends "${missing[@]}" "${extras[@]}" >&2
[ -x /usr/bin/chromium ] && [ -x /usr/bin/chromedriver ] \
  || { echo "apt-get finished but /usr/bin/chromium or /usr/bin/chromedriver is missing" >&2; exit 1; }
