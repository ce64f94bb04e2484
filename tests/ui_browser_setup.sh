#!/usr/bin/env bash
# Headless Chromium + ChromeDriver from Debian's packages for the browser test (tests/test_ui_browser.py),
# and a small CJK font so the page's Chinese renders in screenshots. Idempotent: installs only what is missing. Needs root (CI runs as root); no browser is downloaded
# by a test tool: selenium drives /usr/bin/chromium through /usr/bin/chromedriver.
set -euo pipefail

CJK_FONT=/usr/share/fonts/truetype/wqy/wqy-microhei.ttc
if [[ -x /usr/bin/chromium && -x /usr/bin/chromedriver && -f "$CJK_FONT" ]]; then
    echo "ui_browser_setup: chromium, chromedriver and a CJK font are installed"
    exit 0
fi
if [[ "$(id -u)" != "0" ]]; then
    echo "ui_browser_setup: chromium/chromedriver missing and not root: run" \
         "'sudo apt-get update && sudo apt-get install -y chromium chromium-driver fonts-wqy-microhei'" >&2
    exit 1
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -q
apt-get install -y -q chromium chromium-driver fonts-wqy-microhei
/usr/bin/chromium --version || true
/usr/bin/chromedriver --version
