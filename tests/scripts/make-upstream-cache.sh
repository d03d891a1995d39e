#!/usr/bin/env bash
# Builds a small real Nix closure (input-addressed, so signatures matter) and exports it as two
# file:// binary caches that a static HTTP server can serve as upstreams:
#   DIR/cache            signed by DIR/secret.key (the "trusted" upstream key)
#   DIR/cache-untrusted  the same paths signed only by DIR/untrusted.key
# and DIR/paths (store paths, the top one first), DIR/public.key, DIR/untrusted.public.
# Usage: make-upstream-cache.sh DIR [KEY_NAME] [BIG_MIB]    Needs nix-bin (Nix >= 2.8) and root.
set -euo pipefail
D=$1; NAME=${2:-upstream-test-1}; BIG=${3:-4}
mkdir -p "$D"; D=$(cd "$D" && pwd)
export XDG_CACHE_HOME="$D/xdg"                       # Nix keeps narinfo lookups on disk for 30 days
# Never look for cache.nixos.org; build as root without build users (no nixbld group needed) and
# without a sandbox (the builders run /bin/sh from the host).
export NIX_CONFIG=$'substituters =\nexperimental-features = nix-command\nbuild-users-group =\nsandbox = false'
salt="$(date +%s%N)-$$-$RANDOM"
OUT=$(nix-build --no-out-link -E "
  let
    dep = derivation { name = \"dep-$salt\"; system = builtins.currentSystem; builder = \"/bin/sh\";
                       args = [\"-c\" \"echo dependency > \$out\"]; };
    big = derivation { name = \"big-$salt\"; system = builtins.currentSystem; builder = \"/bin/sh\";
                       args = [\"-c\" \"/usr/bin/head -c $((BIG * 1048576)) /dev/urandom > \$out; echo \${dep} >> \$out\"]; };
  in derivation { name = \"top-$salt\"; system = builtins.currentSystem; builder = \"/bin/sh\";
                  args = [\"-c\" \"echo \${dep} \${big} > \$out\"]; }")
nix-store --generate-binary-cache-key "$NAME" "$D/secret.key" "$D/public.key"
nix-store --generate-binary-cache-key "untrusted-$NAME" "$D/untrusted.key" "$D/untrusted.public"
nix store sign --key-file "$D/untrusted.key" --recursive "$OUT"
nix copy --to "file://$D/cache-untrusted" "$OUT"
nix store sign --key-file "$D/secret.key" --recursive "$OUT"
nix copy --to "file://$D/cache" "$OUT"
# The trusted cache must carry only the trusted key's signatures, the other only the untrusted one's.
sed -i "/^Sig: untrusted-$NAME:/d" "$D"/cache/*.narinfo
nix-store -qR "$OUT" | sort > "$D/paths.all"
{ echo "$OUT"; grep -v "^$OUT\$" "$D/paths.all"; } > "$D/paths"; rm "$D/paths.all"
echo "upstream cache: $D/cache ($(wc -l < "$D/paths") paths), key $(cat "$D/public.key")"
