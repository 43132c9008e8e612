#!/usr/bin/env bash
# Writes the Wasm module as an OCI image, in an OCI image layout directory, byte-reproducibly:
# the same module gives the same blobs, hence the same manifest digest.
#
#   oci/build-image.sh <module.wasm> <out-dir> <tag>
#
# The image is what Istio's Wasm image fetcher (istio-agent, pkg/wasm/imagefetcher.go) calls the
# "compat" variant with OCI media types: one layer, application/vnd.oci.image.layer.v1.tar+gzip,
# a tar holding `plugin.wasm`; the fetcher takes the last layer and extracts `plugin.wasm`.
# The config is a plain OCI image config (os wasip1, architecture wasm), so any OCI registry and
# client (skopeo, crane, oras, docker-registry) handles it as an ordinary image.
#
# Reproducible because nothing varies but the module: the tar has fixed names, modes, owners and
# mtime (GNU tar --sort/--mtime/--owner), gzip writes no name or time (-n), the JSON is written
# here byte for byte, and the config has no `created` time. Needs GNU tar, gzip, sha256sum.
#
# Prints the manifest digest (sha256:…) on stdout, which is what WasmPlugin's `sha256` must hold
# for an oci:// url (Istio compares it with the image manifest's digest, not the module's), and
# writes it to <out-dir>/manifest-digest.
set -euo pipefail

module=${1:?usage: build-image.sh <module.wasm> <out-dir> <tag>}
out=${2:?out-dir}
tag=${3:?tag}

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

rm -rf "$out"
mkdir -p "$out/blobs/sha256"

# blob <file>: stores the file under its digest, prints "<hex> <size>".
blob() {
	local hex size
	hex=$(sha256sum "$1" | cut -d' ' -f1)
	size=$(stat -c %s "$1")
	cp "$1" "$out/blobs/sha256/$hex"
	echo "$hex $size"
}

# The layer: plugin.wasm in a tar, gzip'd.
mkdir "$work/root"
cp "$module" "$work/root/plugin.wasm"
tar --format=ustar --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner \
	--mode=0444 -C "$work/root" -cf "$work/layer.tar" plugin.wasm
diff_id=$(sha256sum "$work/layer.tar" | cut -d' ' -f1)
gzip -n -9 -c "$work/layer.tar" >"$work/layer.tar.gz"
read -r layer_hex layer_size < <(blob "$work/layer.tar.gz")

# The config (no timestamps).
printf '%s' '{"architecture":"wasm","os":"wasip1","config":{},"rootfs":{"type":"layers","diff_ids":["sha256:'"$diff_id"'"]}}' >"$work/config.json"
read -r config_hex config_size < <(blob "$work/config.json")

# The manifest.
printf '%s' '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:'"$config_hex"'","size":'"$config_size"'},"layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"sha256:'"$layer_hex"'","size":'"$layer_size"'}]}' >"$work/manifest.json"
read -r manifest_hex manifest_size < <(blob "$work/manifest.json")

# The layout: oci-layout and index.json naming the manifest by tag.
printf '%s' '{"imageLayoutVersion":"1.0.0"}' >"$out/oci-layout"
printf '%s' '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:'"$manifest_hex"'","size":'"$manifest_size"',"annotations":{"org.opencontainers.image.ref.name":"'"$tag"'"}}]}' >"$out/index.json"

echo "sha256:$manifest_hex" >"$out/manifest-digest"
echo "sha256:$manifest_hex"
