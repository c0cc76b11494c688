#!/bin/sh
# Builds and runs the packaging consumers against an installed libattn.
#   tests/package/run.sh PREFIX [shared|static|system]
# shared: a `cmake --install` tree at PREFIX; static: the same for BUILD_SHARED_LIBS=OFF;
# system: the Debian packages installed in /usr (no search paths given at all; the Debian
# packages do not contain the Python module).
set -eu
prefix=$1
kind=${2:-shared}
here=$(cd "$(dirname "$0")" && pwd)
src=$(cd "$here/../.." && pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
arch=$(gcc -print-multiarch 2>/dev/null || true)
libdir="$prefix/lib${arch:+/$arch}"
if [ "$kind" != system ]; then
  export PKG_CONFIG_PATH="$libdir/pkgconfig"
  export LD_LIBRARY_PATH="$libdir"
fi

say() { printf '== %s (%s)\n' "$1" "$kind"; }
show_lib() { ldd "$1" | grep -E 'libattn' || echo "   libattn linked statically"; }

say "CMake find_package(attn 0.1 REQUIRED)"
cmake -S "$here/find_package" -B "$work/fp" -DCMAKE_PREFIX_PATH="$prefix" >/dev/null
cmake --build "$work/fp" >/dev/null
"$work/fp/consumer"
show_lib "$work/fp/consumer"

if [ "$kind" = shared ]; then
  say "CMake add_subdirectory(libattn)"
  cmake -S "$here/add_subdirectory" -B "$work/sub" -DATTN_SOURCE_DIR="$src" >/dev/null
  cmake --build "$work/sub" -j2 >/dev/null
  "$work/sub/consumer"
fi

say "make + pkg-config"
flags=""
[ "$kind" = static ] && flags=--static
echo "   pkg-config $flags --cflags --libs attn: $(pkg-config $flags --cflags --libs attn)"
make -s -f "$here/pkg-config/Makefile" OUT="$work/pc" PKG_CONFIG_FLAGS="$flags"
"$work/pc"

say "cc ... -lattn"
case "$kind" in
  system) cc -o "$work/bare" "$here/consumer.c" -lattn -lm ;;
  shared) cc -o "$work/bare" "$here/consumer.c" -I"$prefix/include" -L"$libdir" -lattn -lm ;;
  static) cc -o "$work/bare" "$here/consumer.c" -I"$prefix/include" -L"$libdir" -lattn -lopenblas -lpthread -ldl -lm ;;
esac
"$work/bare"
show_lib "$work/bare"

# The attn tool and its man page come with the library (libattn-dev in the Debian packages);
# run it with no library search path, as a user would: its RUNPATH or the system finds libattn.
say "the attn tool"
tool="$prefix/bin/attn"
[ "$kind" = system ] && tool=$(command -v attn)
test -x "$tool" || { echo "   $prefix/bin/attn not installed"; exit 1; }
test -f "$prefix/share/man/man1/attn.1" || { echo "   attn.1 not installed"; exit 1; }
env -u LD_LIBRARY_PATH "$tool" --version | sed 's/^/   /'
env -u LD_LIBRARY_PATH "$tool" info --q-heads 8 --kv-heads 2 --qk-dim 64 --v-dim 64 --threads 1 |
  grep -E '^(libattn|workspace)' | sed 's/^/   /'
# The Python module, when it was built: imported from a copy of the install tree at another
# place, with no library search path, so that its relative RPATH is what finds libattn.
if [ "$kind" != system ]; then
  if [ -d "$prefix/lib/python3/dist-packages/attn" ]; then
    say "Python: import attn from the install tree moved elsewhere"
    mkdir -p "$work/moved" && cp -a "$prefix/." "$work/moved/"
    env -u LD_LIBRARY_PATH PYTHONPATH="$work/moved/lib/python3/dist-packages" \
      /usr/bin/python3 "$here/consumer.py"
  else
    say "Python: no module installed (built without python3-dev and python3-numpy)"
  fi
fi
