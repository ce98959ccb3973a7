# shellcheck shell=bash
# The tally the check scripts share (sourced, not run): `ok` and `bad` print one line each and
# count it; `indent` sets a command's output under its line; `die` ends the script with the
# tally and exit 1 (CHECK_NAME names the script in its message); `check_unit_exposure` is the
# packages' shared check of their systemd unit's hardening. The script prints
# "$pass passed, $fail failed" at its end and exits non-zero when $fail is.
pass=0
fail=0
ok() { printf 'ok    %s\n' "$*"; pass=$((pass + 1)); }
bad() { printf 'FAIL  %s\n' "$*"; fail=$((fail + 1)); }
indent() { sed 's/^/      /'; }
die() {
    printf '%s: ERROR: %s\n' "${CHECK_NAME:-check}" "$*" >&2
    printf '%d passed, %d failed\n' "$pass" "$((fail + 1))"
    exit 1
}

# systemd-analyze security of unit file $1 (offline): its exposure must be at most 2.0.
check_unit_exposure() {
    local out
    if out="$(systemd-analyze security --offline=yes --threshold=20 "$1" 2>&1)"; then
        ok "systemd-analyze security: $(printf '%s\n' "$out" | grep -o 'exposure level.*' | head -n1)"
    else
        bad "systemd-analyze security: exposure above 2.0 (or not analysable)"
        printf '%s\n' "$out" | grep -E '✗|exposure|rror' | indent
    fi
}
