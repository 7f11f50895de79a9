#!/bin/sh
# SPDX-License-Identifier: MIT
# Installs the exact Debian 12 packages brigade builds, tests and benchmarks with.
# Idempotent: packages already present are left alone and apt is not touched at all
# when nothing is missing. Works as root or through sudo.
set -eu

PKGS="
build-essential
cmake
pkg-config
git
clang
lld
libclang-rt-14-dev
clang-format
clang-tidy
cppcheck
libuv1-dev
node-llhttp
libcurl4-openssl-dev
libjansson-dev
libyaml-dev
libsqlite3-dev
libcmocka-dev
libcsv-dev
liblinear-dev
libssl-dev
ca-certificates
nodejs
npm
nginx-light
wrk
slowhttptest
sqlite3
"

missing=""
for p in $PKGS; do
    if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
        missing="$missing $p"
    fi
done

# nodejs may come from another repository (nodesource); any working node >= 18 will do.
if command -v node >/dev/null 2>&1 && command -v npm >/dev/null 2>&1; then
    missing=$(printf '%s\n' $missing | grep -v -x -e nodejs -e npm | tr '\n' ' ' || true)
fi

missing=$(echo $missing)
if [ -z "$missing" ]; then
    echo "install-deps: all packages present"
    exit 0
fi

if [ "$(id -u)" -eq 0 ]; then
    SUDO=""
elif command -v sudo >/dev/null 2>&1; then
    SUDO="sudo"
else
    echo "install-deps: need root or sudo to install:$missing" >&2
    exit 1
fi

echo "install-deps: installing $missing"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
# shellcheck disable=SC2086
$SUDO apt-get install -y -qq --no-install-recommends $missing
