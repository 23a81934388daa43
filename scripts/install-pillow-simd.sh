#!/bin/sh
# Replace Pillow by Pillow-SIMD (same API and import name, SIMD resize/convert) in the virtual
# environment whose bin/ folder is $1. Called by `make install`; never fails the install: without
# a C compiler or the libjpeg/zlib headers, or when the build fails, plain Pillow stays.
# Pillow-SIMD is built against the system's libraries, while Pillow's wheels bundle their own:
# it is installed only if it opens every format the installed Pillow opens (WebP, AVIF, TIFF,
# JPEG 2000: crawled images come in all of them), so the -dev packages must be there.
# The wheel is built before Pillow is touched, and checked after, so Pillow is never left missing.
# AVX2 is enabled when this CPU has it (the build is for this machine only). About 40 s on 2 cores.
set -u
BIN=${1:?usage: install-pillow-simd.sh VENV_BIN}
PY="$BIN/python"
CC_BIN=${CC:-cc}

keep_pillow() { echo "pillow-simd: $1; keeping plain Pillow"; exit 0; }

"$PY" -c "import PIL, sys; sys.exit(0 if '.post' in PIL.__version__ else 1)" 2>/dev/null \
  && { echo "pillow-simd: already installed"; exit 0; }
command -v "$CC_BIN" >/dev/null 2>&1 || keep_pillow "no C compiler ($CC_BIN)"
printf '#include <stdio.h>\n#include <jpeglib.h>\n#include <zlib.h>\nint main(void) { return 0; }\n' \
  | "$CC_BIN" -x c -fsyntax-only - 2>/dev/null || keep_pillow "libjpeg/zlib headers missing (apt-get install libjpeg-dev zlib1g-dev)"

# Formats the installed Pillow opens, and the header each needs for a Pillow-SIMD build.
FORMATS="jpg zlib webp avif libtiff jpg_2000"
WANTED=$("$PY" -c "from PIL import features; print(' '.join(f for f in '$FORMATS'.split() if features.check(f)))" 2>/dev/null)
header_of() {
  case $1 in
    webp) echo "webp/decode.h libwebp-dev" ;;
    avif) echo "avif/avif.h libavif-dev" ;;
    libtiff) echo "tiffio.h libtiff-dev" ;;
    jpg_2000) echo "openjpeg.h libopenjp2-7-dev" ;;
  esac
}
MISSING=""
for f in $WANTED; do
  set -- $(header_of "$f")
  [ $# -eq 2 ] || continue
  found=$(find /usr/include /usr/local/include -name "$(basename "$1")" -path "*$1" 2>/dev/null | head -1)
  [ -n "$found" ] || MISSING="$MISSING $2"
done
[ -z "$MISSING" ] || keep_pillow "Pillow opens formats a Pillow-SIMD build here would not; install:$MISSING"

FLAGS=""
grep -qw avx2 /proc/cpuinfo 2>/dev/null && FLAGS="-mavx2"
WHEELS=$(mktemp -d) || keep_pillow "no temporary folder"
trap 'rm -rf "$WHEELS"' EXIT

echo "pillow-simd: building ${FLAGS:-(SSE4)} ..."
TIMEOUT=""
command -v timeout >/dev/null 2>&1 && TIMEOUT="timeout 900"
CC="$CC_BIN $FLAGS" $TIMEOUT "$BIN/pip" wheel -q --no-deps --no-binary pillow-simd -w "$WHEELS" 'pillow-simd>=10' \
  >"$WHEELS/build.log" 2>&1 || { tail -5 "$WHEELS/build.log"; keep_pillow "build failed"; }
WHEEL=$(ls "$WHEELS"/pillow_simd-*.whl 2>/dev/null | head -1)
[ -n "$WHEEL" ] || keep_pillow "no wheel was built"

PILLOW_VERSION=$("$PY" -c "import PIL; print(PIL.__version__)" 2>/dev/null)
"$BIN/pip" uninstall -q -y pillow >/dev/null 2>&1
if "$BIN/pip" install -q --no-deps "$WHEEL" \
  && "$PY" -c "from PIL import Image, features; import sys; sys.exit(0 if all(features.check(f) for f in '$WANTED'.split()) and '.post' in Image.__version__ else 1)"; then
  echo "pillow-simd: installed $("$PY" -c "import PIL; print(PIL.__version__)")"
  exit 0
fi
echo "pillow-simd: the built wheel does not work or lacks a format of ($WANTED); restoring Pillow ${PILLOW_VERSION:-}"
"$BIN/pip" uninstall -q -y pillow-simd >/dev/null 2>&1
"$BIN/pip" install -q "pillow${PILLOW_VERSION:+==$PILLOW_VERSION}" || "$BIN/pip" install -q pillow
exit 0
