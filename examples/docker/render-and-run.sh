#!/usr/bin/env bash
# Renders an Envoy bootstrap template of envoy/ from environment variables, then runs Envoy.
# Used by examples/docker-compose.yaml (each sidecar container starts with it); works anywhere.
#
#   render-and-run.sh render TEMPLATE OUTPUT         render TEMPLATE into OUTPUT
#   render-and-run.sh run TEMPLATE OUTPUT [CMD...]   render, then exec CMD
#                                                    (default: func-e run -c OUTPUT)
#   render-and-run.sh certs DIR                      make DIR/{ca,server,client}{,-key}.pem with
#                                                    openssl unless DIR/ca.pem exists
#
# Rendering does what the test harness's support::render does: full-line comments (the template's
# documentation header) are dropped, a line `{{STATS_TAGS}}` becomes envoy/stats-tags.yaml
# (without its comments; $STATS_TAGS_FILE, default stats-tags.yaml next to TEMPLATE) unless
# $STATS_TAGS is set, and every other `{{NAME}}` becomes the value of the environment variable
# NAME, inserted verbatim. It fails, writing nothing, when a placeholder has no variable, and
# checks that no `{{NAME}}` is left. `{{UPSTREAM_ALPN}}` (the client's TLS ALPN) is derived from
# $EXCHANGE_CONFIG exactly as support::render does: ["istio"] when client_gate is "never" (no
# frame will be sent), ["istio-peer-exchange", "istio"] otherwise. JSON values that sit inside single quotes in a template
# (STATS_CONFIG, EXCHANGE_CONFIG…) must have any ' doubled.
set -euo pipefail

die() {
  echo "render-and-run.sh: $*" >&2
  exit 1
}

render() {
  local template=$1 output=$2
  [[ -f $template ]] || die "no template $template"
  local body
  body=$(grep -v '^[[:space:]]*#' "$template" || true)
  if [[ -z ${STATS_TAGS+x} ]] && grep -qx '{{STATS_TAGS}}' <<<"$body"; then
    local tags_file=${STATS_TAGS_FILE:-$(dirname "$template")/stats-tags.yaml}
    [[ -f $tags_file ]] || die "no $tags_file for {{STATS_TAGS}}"
    STATS_TAGS=$(grep -v '^[[:space:]]*#' "$tags_file" || true)
    export STATS_TAGS
  fi
  if grep -q '{{UPSTREAM_ALPN}}' <<<"$body"; then
    [[ -n ${EXCHANGE_CONFIG+x} ]] || die "$template: {{UPSTREAM_ALPN}} needs EXCHANGE_CONFIG"
    if grep -Eq '"client_gate"[[:space:]]*:[[:space:]]*"never"' <<<"$EXCHANGE_CONFIG"; then
      UPSTREAM_ALPN='["istio"]'
    else
      UPSTREAM_ALPN='["istio-peer-exchange", "istio"]'
    fi
    export UPSTREAM_ALPN
  fi
  local missing=() name
  for name in $(grep -o '{{[A-Za-z0-9_]*}}' <<<"$body" | tr -d '{}' | sort -u); do
    [[ -n ${!name+x} ]] || missing+=("$name")
  done
  ((${#missing[@]} == 0)) || die "$template: no value for: ${missing[*]} (set them in the environment)"
  # awk reads values from ENVIRON, so no character in them needs escaping; the replaced text is
  # not scanned again.
  local rendered
  rendered=$(awk '{
      out = ""; line = $0
      while (match(line, /\{\{[A-Za-z0-9_]+\}\}/)) {
        name = substr(line, RSTART + 2, RLENGTH - 4)
        out = out substr(line, 1, RSTART - 1) ENVIRON[name]
        line = substr(line, RSTART + RLENGTH)
      }
      print out line
    }' <<<"$body")
  # Nothing that looks like a placeholder may be left (e.g. a malformed `{{ NAME }}`).
  if grep -n '{{' <<<"$rendered" >&2; then
    die "$template: '{{' left after rendering (lines above)"
  fi
  mkdir -p "$(dirname "$output")"
  printf '%s\n' "$rendered" >"$output"
}

certs() {
  local dir=$1
  mkdir -p "$dir"
  if [[ -f $dir/ca.pem ]]; then
    echo "certificates already in $dir"
    return
  fi
  local tmp
  tmp=$(mktemp -d)
  # Bookinfo's identities, as Istio's CA would issue them.
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 365 \
    -subj "/O=cluster.local/CN=Demo CA" -addext "basicConstraints=critical,CA:TRUE" \
    -addext "keyUsage=critical,keyCertSign,cRLSign" \
    -keyout "$tmp/ca-key.pem" -out "$tmp/ca.pem" 2>/dev/null
  local name san
  for name in server client; do
    if [[ $name == server ]]; then
      san="URI:${SERVER_SPIFFE:-spiffe://cluster.local/ns/default/sa/bookinfo-mongodb},DNS:localhost"
    else
      san="URI:${CLIENT_SPIFFE:-spiffe://cluster.local/ns/default/sa/bookinfo-ratings-v2}"
    fi
    printf '%s\n' "basicConstraints=critical,CA:FALSE" \
      "keyUsage=critical,digitalSignature,keyEncipherment" \
      "extendedKeyUsage=serverAuth,clientAuth" "subjectAltName=critical,$san" >"$tmp/$name.ext"
    openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -subj "/O=cluster.local" \
      -keyout "$tmp/$name-key.pem" -out "$tmp/$name.csr" 2>/dev/null
    openssl x509 -req -days 365 -in "$tmp/$name.csr" -CA "$tmp/ca.pem" -CAkey "$tmp/ca-key.pem" \
      -CAcreateserial -extfile "$tmp/$name.ext" -out "$tmp/$name.pem" 2>/dev/null
  done
  chmod 644 "$tmp"/*.pem # Envoy may run as another user
  cp "$tmp"/{ca,server,server-key,client,client-key}.pem "$dir/"
  rm -rf "$tmp"
  echo "certificates written to $dir"
}

case ${1:-} in
render)
  (($# == 3)) || die "usage: $0 render TEMPLATE OUTPUT"
  render "$2" "$3"
  ;;
run)
  (($# >= 3)) || die "usage: $0 run TEMPLATE OUTPUT [CMD...]"
  template=$2 output=$3
  shift 3
  render "$template" "$output"
  echo "rendered $template -> $output"
  if (($# == 0)); then
    set -- func-e run -c "$output"
  fi
  exec "$@"
  ;;
certs)
  (($# == 2)) || die "usage: $0 certs DIR"
  certs "$2"
  ;;
*)
  die "usage: $0 {render TEMPLATE OUTPUT | run TEMPLATE OUTPUT [CMD...] | certs DIR}"
  ;;
esac
