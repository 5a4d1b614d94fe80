#!/usr/bin/env bash
# The console's third-party scripts, from pinned npm packages: Chart.js for its
# charts, Swagger UI and ReDoc for /docs and /redoc (served from the package, so
# they render offline), and axe-core for the browser tests' accessibility check.
#
#   scripts/console_assets.sh NPM_DIR VENDOR_DIR
#
# Each package is unpacked into NPM_DIR/<name>; the files the console serves are
# copied into VENDOR_DIR (the package's static/vendor). The Makefile
# (make console-assets) and the gateway's image build both run this, so the
# versions are stated once, here.
set -euo pipefail

PACKAGES=(chart.js@4.5.1 swagger-ui-dist@5.30.2 redoc@2.5.1 axe-core@4.11.0)

npm_dir=${1:?usage: console_assets.sh NPM_DIR VENDOR_DIR}
vendor=${2:?usage: console_assets.sh NPM_DIR VENDOR_DIR}

rm -rf "$npm_dir" "$vendor"
mkdir -p "$npm_dir" "$vendor/chartjs" "$vendor/swagger-ui" "$vendor/redoc"
(cd "$npm_dir" && for package in "${PACKAGES[@]}"; do
  npm pack --silent --no-audit --no-fund "$package" >/dev/null
done)
for tarball in "$npm_dir"/*.tgz; do
  mkdir -p "${tarball%%-[0-9]*}"
  tar -xzf "$tarball" -C "${tarball%%-[0-9]*}" --strip-components=1
done
cp "$npm_dir"/chart.js/dist/chart.umd.min.js "$npm_dir"/chart.js/LICENSE.md "$vendor/chartjs/"
cp "$npm_dir"/swagger-ui-dist/{swagger-ui-bundle.js,swagger-ui.css,favicon-32x32.png,LICENSE} \
  "$vendor/swagger-ui/"
cp "$npm_dir"/redoc/bundles/redoc.standalone.js "$npm_dir"/redoc/LICENSE "$vendor/redoc/"
touch "$vendor/.fetched"
