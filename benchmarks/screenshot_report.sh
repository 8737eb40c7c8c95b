#!/usr/bin/env bash
# Render an axformer report in headless Chromium (Debian's `chromium` package) and save a screenshot.
# Usage: benchmarks/screenshot_report.sh OUTPUT/report.html shot.png [width] [height]
set -euo pipefail
report=$(realpath "$1"); shot=$(realpath -m "$2"); width=${3:-1200}; height=${4:-2600}
browser=$(command -v chromium || command -v chromium-browser || true)
[ -n "$browser" ] || { echo "chromium not found; on Debian: apt-get install chromium" >&2; exit 2; }
profile=$(mktemp -d); trap 'rm -rf "$profile"' EXIT
"$browser" --headless --no-sandbox --disable-gpu --disable-quic --no-first-run --disable-background-networking \
  --disable-component-update --disable-sync --hide-scrollbars --user-data-dir="$profile" \
  --window-size="$width,$height" --screenshot="$shot" "file://$report" 2>/dev/null
[ -s "$shot" ] || { echo "no screenshot written for $report" >&2; exit 1; }
echo "$shot"
