#!/usr/bin/env bash
# Makes sure headless Chromium and its WebDriver are on this machine (used by `make test` and
# `make browser-check`): the browser tests open normlab's reports and docs in them.
# Debian's packages chromium and chromium-driver, when apt-get and root are available;
# else a clear message.
set -uo pipefail

if [[ -x /usr/bin/chromium && -x /usr/bin/chromedriver ]]; then
  exit 0
fi
if command -v apt-get >/dev/null 2>&1 && [[ $(id -u) -eq 0 ]]; then
  echo "browser tests: installing Debian's chromium and chromium-driver"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
    apt-get install -y -qq chromium chromium-driver >/dev/null && exit 0
  echo "browser tests: apt-get failed" >&2
fi
echo "browser tests: /usr/bin/chromium and /usr/bin/chromedriver are needed;" \
     "install Debian's chromium and chromium-driver (as root)." >&2
exit 1
