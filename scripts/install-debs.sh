#!/usr/bin/env bash
# Installs the Debian packages the tests run for real, only what is missing: nginx and Prometheus
# (tests/deploy), Chromium and a CJK font (tests/browser: the review page, its screenshots in Chinese).
# Idempotent: does nothing when all are there; runs `apt-get update` at most once, only if needed.
# Never downloads Playwright's own browsers.
set -eu
missing=()
command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || missing+=(nginx-light)
{ command -v prometheus >/dev/null 2>&1 && command -v promtool >/dev/null 2>&1; } || missing+=(prometheus)
[ -x /usr/bin/chromium ] || missing+=(chromium)
fc-list :lang=zh family 2>/dev/null | grep -q . || missing+=(fonts-noto-cjk)
[ ${#missing[@]} -eq 0 ] && exit 0
if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null 2>&1; then SUDO=(sudo); else
    echo "install-debs.sh: need root (or sudo) to install: ${missing[*]}" >&2
    exit 1
  fi
else
  SUDO=()
fi
export DEBIAN_FRONTEND=noninteractive
# Only refresh the package lists when apt cannot find a candidate with the current ones.
for pkg in "${missing[@]}"; do
  if ! apt-cache policy "$pkg" 2>/dev/null | grep -q 'Candidate: [0-9]'; then
    "${SUDO[@]}" apt-get update -q
    break
  fi
done
# policy-rc.d 101 keeps the packages' services from starting: the tests run their own instances.
"${SUDO[@]}" sh -c 'printf "#!/bin/sh\nexit 101\n" > /usr/sbin/policy-rc.d.huayu'
"${SUDO[@]}" chmod +x /usr/sbin/policy-rc.d.huayu
restore=0
if [ ! -e /usr/sbin/policy-rc.d ]; then
  "${SUDO[@]}" mv /usr/sbin/policy-rc.d.huayu /usr/sbin/policy-rc.d
  restore=1
else
  "${SUDO[@]}" rm -f /usr/sbin/policy-rc.d.huayu
fi
status=0
"${SUDO[@]}" apt-get install -y -q --no-install-recommends "${missing[@]}" || status=$?
[ $restore -eq 1 ] && "${SUDO[@]}" rm -f /usr/sbin/policy-rc.d
exit $status
