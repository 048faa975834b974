#!/usr/bin/env bash
# Installs Debian's Chromium (driven by Playwright in tests/browser) and a CJK font (so the review
# page's screenshots show Chinese, not boxes). Idempotent: does nothing when both are there; runs
# `apt-get update` at most once, only if apt has no candidate. Never downloads Playwright's own browsers.
set -eu
missing=()
[ -x /usr/bin/chromium ] || missing+=(chromium)
fc-list :lang=zh family 2>/dev/null | grep -q . || missing+=(fonts-noto-cjk)
[ ${#missing[@]} -eq 0 ] && exit 0
if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null 2>&1; then SUDO=(sudo); else
    echo "install-browser.sh: need root (or sudo) to install: ${missing[*]}" >&2
    exit 1
  fi
else
  SUDO=()
fi
export DEBIAN_FRONTEND=noninteractive
for pkg in "${missing[@]}"; do
  if ! apt-cache policy "$pkg" 2>/dev/null | grep -q 'Candidate: [0-9]'; then
    "${SUDO[@]}" apt-get update -q
    break
  fi
done
"${SUDO[@]}" apt-get install -y -q --no-install-recommends "${missing[@]}"
