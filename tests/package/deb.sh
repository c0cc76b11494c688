#!/bin/sh
# Builds the Debian packages with CPack, installs them with apt-get, consumes the installed
# library by every route with no search paths, and removes the packages again.
#   tests/package/deb.sh   (as root)
set -eu
src=$(cd "$(dirname "$0")/../.." && pwd)
build=$(mktemp -d)
cleanup() {
  apt-get purge -y -qq libattn-dev 'libattn[0-9]*' >/dev/null 2>&1 || true
  rm -rf "$build"
}
trap cleanup EXIT
cmake -S "$src" -B "$build" -DCMAKE_BUILD_TYPE=Release -DCMAKE_INSTALL_PREFIX=/usr \
  -DATTN_BUILD_TESTS=OFF -DATTN_BUILD_EXAMPLES=OFF >/dev/null
cmake --build "$build" -j "$(nproc)" >/dev/null
(cd "$build" && cpack -G DEB >/dev/null)
for deb in "$build"/libattn*.deb; do
  echo "== $(basename "$deb")"
  dpkg-deb --field "$deb" Package Version Depends | sed 's/^/   /'
  dpkg-deb --contents "$deb" | awk '{print "   " $6 ($7 ? " " $7 " " $8 : "")}' | grep -v '/$'
done
echo "== apt-get install ./libattn*.deb"
(cd "$build" && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq ./libattn*.deb >/dev/null)
dpkg -l 'libattn*' | awk '/^ii/ {print "   " $2 " " $3}'
readelf -d /usr/lib/"$(gcc -print-multiarch)"/libattn.so | grep SONAME | sed 's/^ */   /'
sh "$src/tests/package/run.sh" /usr system
