#!/usr/bin/env bash
# The kernel's C codec under AddressSanitizer + UndefinedBehaviorSanitizer.
#
# Builds kernel/_speedups.c with -fsanitize=address,undefined into a copy of
# the tree in a temporary directory (the extension in the tree is never
# touched), checks that the copy imports that build, then runs there:
#   1. pytest tests/kernel (the C-vs-reference differential tests among them)
#      and the DAG-CBOR targets of tests/fuzz (decode, C vs reference);
#   2. bench/fuzz.py on the same two targets with its own seed, briefly.
# Python objects come from malloc (PYTHONMALLOC=malloc), so ASan sees the
# bounds of every str and bytes the codec writes; that makes the run ~5x
# slower than the same tests without it, which is why tests/fuzz's other
# targets (the layers above the codec) are left to the normal run.
# Any sanitizer report fails the run: ASan stops at the first error, UBSan is
# built with -fno-sanitize-recover and halt_on_error=1 (either ends the
# process with a non-zero status), ASan also writes its report to a log file,
# and the run's stderr is searched for reports as well. pytest runs with
# --capture=sys so that a report, written by the C runtime to file
# descriptor 2, reaches the terminal instead of a capture file that dies with
# the process.
#
# Usage: tools/sanitize.sh   (make sanitize; PYTHON=, CC=, LIBASAN=, FUZZ_INPUTS=N, SANITIZE_PYTEST_ARGS=)
# Needs gcc (or a clang whose libasan is given in LIBASAN) and the Python headers.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
if [ -z "${PYTHON:-}" ]; then
  if [ -x "$ROOT/.venv/bin/python" ]; then PYTHON="$ROOT/.venv/bin/python"; else PYTHON=python3; fi
fi
CC=${CC:-gcc}
FUZZ_INPUTS=${FUZZ_INPUTS:-2000}
LIBASAN=${LIBASAN:-$($CC -print-file-name=libasan.so)}
if [ ! -f "$LIBASAN" ]; then
  echo "sanitize: no libasan for $CC (got '$LIBASAN'); install gcc's libasan or set LIBASAN" >&2
  exit 2
fi

WORK=$(mktemp -d "${TMPDIR:-/tmp}/usagi-sanitize.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
COPY="$WORK/repo"
mkdir -p "$COPY"
# The tree without its build products, caches or venv; ../shared (the test
# fixtures) is linked beside the copy as it sits beside the repository.
tar -C "$ROOT" --exclude=./.venv --exclude=./.git --exclude='*.so' --exclude='__pycache__' \
    --exclude=./.hypothesis --exclude=./.pytest_cache --exclude=./.mypy_cache --exclude=./.ruff_cache \
    --exclude=./build -cf - . | tar -C "$COPY" -xf -
if [ -d "$ROOT/../shared" ]; then ln -s "$(cd "$ROOT/../shared" && pwd)" "$WORK/shared"; fi

INCLUDE=$("$PYTHON" -c 'import sysconfig; print(sysconfig.get_paths()["include"])')
SUFFIX=$("$PYTHON" -c 'import sysconfig; print(sysconfig.get_config_var("EXT_SUFFIX"))')
SO="$COPY/kernel/_speedups$SUFFIX"
echo "sanitize: building $SO"
"$CC" -shared -fPIC -O1 -g -std=c11 -Wall -Wextra -Wno-unused-parameter -Werror \
  -fsanitize=address,undefined -fno-sanitize-recover=all -fno-omit-frame-pointer \
  -I"$INCLUDE" "$COPY/kernel/_speedups.c" -o "$SO"

mkdir -p "$WORK/logs"
export LD_PRELOAD="$LIBASAN"
# CPython keeps objects alive until exit by design: leaks are not reports here.
export ASAN_OPTIONS="detect_leaks=0:halt_on_error=1:abort_on_error=0:log_path=$WORK/logs/asan"
export UBSAN_OPTIONS="halt_on_error=1:print_stacktrace=1"
# Python objects from malloc, not pymalloc's arenas, so ASan sees their bounds.
export PYTHONMALLOC=malloc
export PYTHONPATH="$COPY"
export PYTHONDONTWRITEBYTECODE=1
# ASan's shadow memory and quarantine inflate RSS (1.4 GB seen for 1,500
# inputs); the fuzz runs' memory bound is checked by the normal suite.
export USAGI_FUZZ_MAX_RSS_MB=16384
unset USAGI_PURE_PYTHON
cd "$COPY"

# Everything the steps write to stderr is also kept, to be searched for reports.
exec 3>&2 2> >(tee "$WORK/logs/stderr.txt" >&3)
tee_pid=$!

status=0
"$PYTHON" - "$SO" <<'EOF' || status=$?
import os, sys
import kernel._speedups, kernel.dagcbor
expected = os.path.realpath(sys.argv[1])
assert os.path.realpath(kernel._speedups.__file__) == expected, (kernel._speedups.__file__, expected)
assert kernel.dagcbor.IMPLEMENTATION == "c", kernel.dagcbor.IMPLEMENTATION
print("sanitize: kernel._speedups is", kernel._speedups.__file__)
EOF
if [ "$status" -eq 0 ]; then
  echo "sanitize: pytest tests/kernel tests/fuzz -k dagcbor"
  start=$SECONDS
  # shellcheck disable=SC2086  (SANITIZE_PYTEST_ARGS: more pytest arguments, split)
  "$PYTHON" -m pytest -q -p no:cacheprovider -x --capture=sys ${SANITIZE_PYTEST_ARGS:-} tests/kernel \
    "tests/fuzz/test_fuzz.py::test_decoder_raises_only_typed_errors[dagcbor.decode]" \
    "tests/fuzz/test_fuzz.py::test_decoder_raises_only_typed_errors[dagcbor.c-vs-reference]" || status=$?
  echo "sanitize: pytest took $((SECONDS - start)) s"
fi
if [ "$status" -eq 0 ]; then
  echo "sanitize: bench/fuzz.py --only dagcbor --inputs $FUZZ_INPUTS"
  start=$SECONDS
  # Without PYTHONPATH: the script puts its own tree (the copy) first on sys.path,
  # where PYTHONPATH would put bench/ (and bench/kernel.py) before it.
  env -u PYTHONPATH "$PYTHON" bench/fuzz.py --only dagcbor --inputs "$FUZZ_INPUTS" \
    --max-rss "$USAGI_FUZZ_MAX_RSS_MB" || status=$?
  echo "sanitize: bench/fuzz.py took $((SECONDS - start)) s"
fi
# Back to the real stderr, and let tee write all it has before it is searched.
exec 2>&3 3>&-
wait "$tee_pid" 2>/dev/null || true
reports=$(find "$WORK/logs" -type f -name 'asan*' 2>/dev/null | head -20)
if [ -n "$reports" ]; then
  echo "sanitize: sanitizer reports:" >&2
  for f in $reports; do echo "== $f" >&2; head -60 "$f" >&2; done
  status=1
fi
if grep -qE 'runtime error:|ERROR: AddressSanitizer|ERROR: LeakSanitizer' "$WORK/logs/stderr.txt"; then
  echo "sanitize: a sanitizer report is in the output above" >&2
  status=1
fi
if [ "$status" -eq 0 ]; then echo "sanitize: ok, no sanitizer report"; else echo "sanitize: FAILED ($status)" >&2; fi
exit "$status"
