#!/usr/bin/env bash
# Debian's Chromium and ChromeDriver for the browser tests (tests/web/): installed with apt if
# missing (once per machine; apt caches the packages), then their versions printed.
set -euo pipefail
if ! command -v chromium > /dev/null || ! command -v chromedriver > /dev/null; then
  export DEBIAN_FRONTEND=noninteractive
  sudo=; [ "$(id -u)" = 0 ] || sudo=sudo
  $sudo apt-get update -qq
  $sudo apt-get install -y -qq --no-install-recommends chromium chromium-driver > /dev/null
fi
chromium --version 2> /dev/null
chromedriver --version
