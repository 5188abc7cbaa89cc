#!/usr/bin/env bash
# Headless Chromium for the `browser` tests (tests/test_report_browser.py renders report.html in it).
#
# Installs Debian's `chromium` package with apt-get when no `chromium` is on PATH: as root, or through
# sudo when that is available. `apt-get update` runs only when the first install attempt fails (a fresh
# container's package lists are often missing or stale). Idempotent: a second run does nothing.
#
#   scripts/setup-browser.sh        # then: pytest -m browser
set -euo pipefail

if command -v chromium >/dev/null 2>&1; then
    echo "setup-browser: $(chromium --version 2>/dev/null || echo chromium) already installed"
    exit 0
fi

if [ "$(id -u)" = 0 ]; then
    SUDO=()
elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
    SUDO=(sudo -n)
else
    echo "setup-browser: chromium is not installed and this is neither root nor a password-less sudo:" \
         "install Debian's 'chromium' package" >&2
    exit 1
fi

export DEBIAN_FRONTEND=noninteractive
# Wait for another apt-get (e.g. scripts/setup-postgres.sh in a parallel step) instead of failing on its lock.
APT=("${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 -y -q)

echo "setup-browser: installing chromium with apt-get"
if ! "${APT[@]}" install --no-install-recommends chromium; then
    echo "setup-browser: install failed; updating the package lists and trying again"
    "${APT[@]}" update
    "${APT[@]}" install --no-install-recommends chromium
fi

if ! command -v chromium >/dev/null 2>&1; then
    echo "setup-browser: apt-get finished but 'chromium' is still not on PATH" >&2
    exit 1
fi
echo "setup-browser: $(chromium --version 2>/dev/null || echo chromium) installed"
