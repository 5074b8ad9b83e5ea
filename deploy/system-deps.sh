#!/usr/bin/env bash
# Install the Debian packages the test suite needs beyond Python: Chromium and its WebDriver, for the
# chat page's browser tests (tests/e2e/test_chat_page.py), and MediaWiki with PHP's SQLite driver, for
# the MediaWiki connector's tests against a real wiki (tests/support/mediawiki.py; the package pulls in
# apache2, kept from starting by a policy-rc.d during the install: the tests serve the wiki with `php -S`), and
# OpenLDAP's slapd with ldap-utils, for the ldap principal source's tests (tests/support/slapd.py starts its own
# slapd in a temporary folder; the system service is kept from starting the same way). Idempotent and quick when
# they are there.
#
#   bash deploy/system-deps.sh        # as root (CI runs it from tests/run.sh); otherwise it says what to install
set -euo pipefail

packages=(chromium chromium-driver mediawiki php-cli php-sqlite3 slapd ldap-utils)
# npm, for the OpenID Connect provider the sign-in tests start (tests/run.sh: npm ci in tests/support/oidc); only
# when there is none (a Node.js from elsewhere, e.g. NodeSource, brings its own npm and must not be replaced)
command -v npm >/dev/null 2>&1 || packages+=(nodejs npm)
# without recommends: no printer, GPU or notification daemons; the fonts are the one recommend wanted
extras=(fonts-liberation)

installed() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q "ok installed"; }

missing=()
for p in "${packages[@]}"; do
  installed "$p" || missing+=("$p")
done
binaries_there() {
  [ -x /usr/bin/chromium ] && [ -x /usr/bin/chromedriver ] && [ -x /usr/bin/php ] \
    && [ -f /usr/share/mediawiki/maintenance/install.php ] && [ -x /usr/sbin/slapd ] && [ -x /usr/sbin/slapadd ] \
    && command -v npm >/dev/null 2>&1
}
if [ ${#missing[@]} -eq 0 ] && binaries_there; then
  exit 0
fi
[ ${#missing[@]} -eq 0 ] && missing=("${packages[@]}")  # packages there but the binaries are not: reinstall

if ! command -v apt-get >/dev/null 2>&1; then
  echo "the browser and MediaWiki tests need Chromium, chromedriver, MediaWiki and PHP with SQLite (missing:" \
       "${missing[*]}); this is not a Debian system, so install them yourself and set CITELINE_CHROMIUM /" \
       "CITELINE_CHROMEDRIVER" >&2
  exit 1
fi
if [ "$(id -u)" -ne 0 ]; then
  echo "the browser and MediaWiki tests need these Debian packages: ${missing[*]}" >&2
  echo "install them as root:  sudo apt-get update && sudo apt-get install -y --no-install-recommends" \
       "${missing[*]} ${extras[*]}" >&2
  exit 1
fi

echo "==> installing ${missing[*]} with apt-get (for the browser and MediaWiki tests)" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -q >&2
# keep the services these packages bring (apache2) from starting where an init system would run them
guard=""
if [ ! -e /usr/sbin/policy-rc.d ]; then
  printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d && guard=1
fi
apt-get install -y -q --no-install-recommends "${missing[@]}" "${extras[@]}" >&2
[ -n "$guard" ] && rm -f /usr/sbin/policy-rc.d
binaries_there \
  || { echo "apt-get finished but chromium, chromedriver, php or MediaWiki's install.php is missing" >&2; exit 1; }
