#!/usr/bin/env bash
# Install headless Chromium (Debian's package) for the browser tests, if it is missing.
# Needs root (as on CI) or passwordless sudo; otherwise says what to run and exits 0,
# and the browser tests skip themselves (except under CI=true, where they fail).
set -euo pipefail
if command -v chromium >/dev/null 2>&1; then
    exit 0
fi
if [ "$(id -u)" -eq 0 ]; then
    as_root=()
elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
    as_root=(sudo -n)
else
    echo "install-browser: chromium is missing; run 'apt-get install chromium' as root" >&2
    exit 0
fi
export DEBIAN_FRONTEND=noninteractive
"${as_root[@]}" apt-get install -y -q chromium >/dev/null 2>&1 || {
    "${as_root[@]}" apt-get update -q >/dev/null
    "${as_root[@]}" apt-get install -y -q chromium >/dev/null
}
echo "install-browser: $(chromium --version)"
