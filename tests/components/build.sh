#!/usr/bin/env bash
# Builds the guest components used by the test suite and copies them into
# tests/components/wasm/<name>.wasm. wasm32-wasip2 emits components directly.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
export CARGO_TARGET_DIR="${COMPONENTS_TARGET_DIR:-$HOME/.cache/invicta/components-target}"
components=(counter clocks burner logger types fetcher caller waiter wstd_fetcher raw_fetcher hostile http_hello raw_handler configured hello_cli snapshotter snapshotter_v2 objects wasi020 types_old files)

if command -v rustup >/dev/null 2>&1 \
    && ! rustup target list --installed | grep -qx wasm32-wasip2; then
    rustup target add wasm32-wasip2
fi

cd "$here"
cargo build --release --target wasm32-wasip2

out="$here/wasm"
mkdir -p "$out"
for name in "${components[@]}"; do
    src="$CARGO_TARGET_DIR/wasm32-wasip2/release/$name.wasm"
    # A component starts with \0asm and version bytes 0d 00 01 00.
    if [ "$(head -c 8 "$src" | od -An -tx1 | tr -d ' \n')" != "0061736d0d000100" ]; then
        echo "build.sh: $src is not a component" >&2
        exit 1
    fi
    cp "$src" "$out/$name.wasm"
    printf '%-10s %8d bytes\n' "$name.wasm" "$(wc -c <"$out/$name.wasm")"
done
