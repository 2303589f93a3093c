#!/usr/bin/env bash
# Copies the console's third-party browser code from npm into console/web/vendor/ and checks it
# against scripts/console-vendor.sha256. Run it only to change a version: the files are
# committed, so `cargo build` needs neither Node nor the network.
set -euo pipefail
cd "$(dirname "$0")/.."
LEAFLET=1.9.4
UPLOT=1.6.32
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
(cd "$tmp" && npm pack --silent "leaflet@$LEAFLET" "uplot@$UPLOT" >/dev/null)
for pkg in "$tmp"/*.tgz; do tar xzf "$pkg" -C "$tmp" && mv "$tmp/package" "${pkg%.tgz}"; done
cp "$tmp/leaflet-$LEAFLET/dist/leaflet.js" "$tmp/leaflet-$LEAFLET/dist/leaflet.css" console/web/vendor/
cp "$tmp/uplot-$UPLOT/dist/uPlot.iife.min.js" "$tmp/uplot-$UPLOT/dist/uPlot.min.css" console/web/vendor/
(cd console/web/vendor && sha256sum -c ../../../scripts/console-vendor.sha256)
