#!/bin/sh
# Runs every fuzz target of the module, one after the other, each for
# FUZZTIME (default 20s). What a target finds that fails lands in its
# package's testdata/fuzz/<Target>/ and stays there as a regression seed
# for `go test`. Exits non-zero if any target failed, after running all.
#
#   scripts/fuzz.sh                       # every target, FUZZTIME each
#   FUZZTIME=30s scripts/fuzz.sh ./internal/manifest ./subjects
#
# `go test -list` prints a package's targets before the "ok <package>" line
# that names it, so names are held until that line arrives.
set -eu

GO=${GO:-go}
FUZZTIME=${FUZZTIME:-20s}
[ $# -gt 0 ] || set -- ./...

if ! out=$("$GO" test -list '^Fuzz' "$@"); then
	printf '%s\n' "$out" >&2
	echo "fuzz: listing the fuzz targets failed" >&2
	exit 1
fi
list=$(printf '%s\n' "$out" | awk '
	/^Fuzz/ { names = names " " $1; next }
	/^ok /  { n = split(names, a, " "); for (i = 1; i <= n; i++) print $2 " " a[i]; names = "" }
	/^(FAIL|\?) / { names = "" }
')
if [ -z "$list" ]; then
	echo "fuzz: no fuzz targets in $*" >&2
	exit 1
fi

total=$(printf '%s\n' "$list" | wc -l | tr -d ' ')
i=0
failed=""
start=$(date +%s)
while read -r pkg fn; do
	i=$((i + 1))
	echo "== [$i/$total] $pkg $fn ($FUZZTIME)"
	if ! "$GO" test -run '^$' -fuzz "^${fn}\$" -fuzztime "$FUZZTIME" "$pkg"; then
		failed="$failed $pkg.$fn"
	fi
done <<EOF
$list
EOF

echo "fuzz: $total targets, $(($(date +%s) - start))s"
if [ -n "$failed" ]; then
	echo "fuzz: failed:$failed (inputs saved under each package's testdata/fuzz)" >&2
	exit 1
fi
