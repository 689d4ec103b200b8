# Shared by scripts/start-gateway and scripts/run-tests: make .venv with a Python
# 3.11+ interpreter, installing Debian's venv module if the interpreter lacks it.
# Sourced, not run.

as_root() {
    if [ "$(id -u)" = 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else
        echo "need root (or sudo) to run: $*" >&2; return 1; fi
}

apt_install() {
    # Install the named Debian packages that are missing, non-interactively.
    local missing=()
    for p in "$@"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
    [ ${#missing[@]} -eq 0 ] && return 0
    echo "installing Debian packages: ${missing[*]}"
    as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

pick_python() {
    for c in "${PYTHON:-}" python3.11 python3.12 python3.13 python3; do
        [ -n "$c" ] && command -v "$c" >/dev/null || continue
        if "$c" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then echo "$c"; return 0; fi
    done
    echo "claudefs-gateway needs Python 3.11 or newer" >&2
    return 1
}

make_venv() {
    # $1: pip requirement spec for this checkout, e.g. ".[test]"
    local py
    py=$(pick_python)
    if [ ! -x .venv/bin/python ]; then
        if ! "$py" -m venv .venv 2>/dev/null; then
            rm -rf .venv
            local v
            v=$("$py" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')
            apt_install "python${v}-venv" || apt_install python3-venv
            "$py" -m venv .venv
        fi
    fi
    .venv/bin/python -m pip install -q --disable-pip-version-check --upgrade "pip>=23" 2>&1 | grep -v "^WARNING: Location" || true
    .venv/bin/python -m pip install -q --disable-pip-version-check -e "$1" 2>&1 | grep -v "^WARNING: Location" || true
    .venv/bin/python -c 'import claudefs_gateway' || { echo "installing claudefs-gateway failed" >&2; return 1; }
}
