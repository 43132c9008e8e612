#!/usr/bin/env python3
"""Check, before the client side is applied, that server-side proxies run our inbound exchange.

A sidecar that rejected a patched listener keeps its previous one, and `istioctl proxy-status`
still says SYNCED for the rest of its config; so read the listeners each proxy really runs and
check every inbound chain that carries TCP (a chain with tcp_proxy): the server side of
istio_tcp_telemetry's exchange (root_id istio_metadata_exchange, "side": "server") must be in it,
ahead of every filter that reads the bytes (mongo_proxy, mysql_proxy, redis_proxy, our stats
filter, tcp_proxy), and Istio's own TCP exchange (istio.metadata_exchange) must not.

Input, any mix of:
  POD.NAMESPACE ...            runs `istioctl proxy-config listener POD.NAMESPACE -o json`
  -l, --selector LABELS        every pod matching LABELS in all namespaces (kubectl get pods -A -l),
                               e.g. -l istio-tcp-telemetry=enabled
  -f, --file PATH              an Envoy admin /config_dump (`pilot-agent request GET config_dump`,
                               or `istioctl proxy-config all POD -o json`), or the JSON list that
                               `istioctl proxy-config listener -o json` prints; `-` for stdin
Run it against every primary cluster of a multi-cluster mesh (--context is passed through), and
with --file for VM workloads (`curl localhost:15000/config_dump` on the VM).

WasmPlugin filters arrive by ECDS: a config_dump holds their configuration (the ecds_filters
section), a listener list only their name; there the filter is recognised by the name the shipped
manifest gives it (extensions.istio.io/wasmplugin/<ns>.istio-tcp-telemetry-inbound-exchange;
extenstions.istio.io/… on Istio 1.24 and 1.25).

Exit status: 0 when every proxy checked passes, 1 when one does not, 2 on bad input.
"""

import argparse
import json
import subprocess
import sys

EXCHANGE_ROOT_ID = "istio_metadata_exchange"
STATS_ROOT_ID = "istio_tcp_stats"
ECDS_EXCHANGE_SUFFIX = "istio-tcp-telemetry-inbound-exchange"
ECDS_STATS_SUFFIX = "istio-tcp-telemetry-inbound-stats"
ECDS_PREFIXES = ("extensions.istio.io/wasmplugin/", "extenstions.istio.io/wasmplugin/")
ISTIO_TCP_EXCHANGE = "istio.metadata_exchange"
READERS = {
    "envoy.filters.network.tcp_proxy",
    "envoy.filters.network.mongo_proxy",
    "envoy.filters.network.mysql_proxy",
    "envoy.filters.network.redis_proxy",
}


def listeners_and_ecds(doc):
    """The listeners and the ECDS filter configs (name -> typed_config) in a parsed document."""
    if isinstance(doc, list):  # istioctl proxy-config listener -o json
        return doc, {}
    listeners, ecds = [], {}
    for cfg in doc.get("configs", []):
        kind = cfg.get("@type", "")
        if kind.endswith("ListenersConfigDump"):
            for s in cfg.get("static_listeners", []):
                listeners.append(s.get("listener", {}))
            for d in cfg.get("dynamic_listeners", []):
                active = d.get("active_state")
                if active:
                    listeners.append(active.get("listener", {}))
        elif kind.endswith("EcdsConfigDump"):
            for f in cfg.get("ecds_filters", []):
                ext = f.get("ecds_filter", {})
                ecds[ext.get("name", "")] = ext.get("typed_config", {})
    if "configs" not in doc:
        raise ValueError("neither a config_dump nor a list of listeners")
    return listeners, ecds


def wasm_role(typed_config):
    """(root_id, side) of a Wasm network filter config, or None."""
    if not typed_config.get("@type", "").endswith("envoy.extensions.filters.network.wasm.v3.Wasm"):
        return None
    config = typed_config.get("config", {})
    value = config.get("configuration", {}).get("value", "")
    try:
        side = json.loads(value).get("side") if value else None
    except (ValueError, AttributeError):
        side = None
    return config.get("root_id", ""), side


def classify(flt, ecds):
    """'server_exchange', 'client_exchange', 'stats', 'istio_exchange', 'reader' or None."""
    name = flt.get("name", "")
    if name == ISTIO_TCP_EXCHANGE:
        return "istio_exchange"
    if name in READERS:
        return "reader"
    typed = flt.get("typed_config")
    if typed is None and "config_discovery" in flt:
        typed = ecds.get(name)
        if typed is None:  # a listener list: known only by the shipped plugin's name
            if name.startswith(ECDS_PREFIXES) and name.endswith(ECDS_EXCHANGE_SUFFIX):
                return "server_exchange"
            if name.startswith(ECDS_PREFIXES) and name.endswith(ECDS_STATS_SUFFIX):
                return "stats"
            return None
    role = wasm_role(typed or {})
    if role is None:
        return None
    root_id, side = role
    if root_id == EXCHANGE_ROOT_ID:
        return "server_exchange" if side == "server" else "client_exchange"
    if root_id == STATS_ROOT_ID:
        return "stats"
    return None


def check_proxy(doc):
    """Problems found (empty: the proxy passes) and the number of TCP chains checked."""
    listeners, ecds = listeners_and_ecds(doc)
    problems, checked = [], 0
    for lis in listeners:
        inbound = lis.get("traffic_direction") == "INBOUND" or lis.get("name") == "virtualInbound"
        if not inbound:
            continue
        for i, chain in enumerate(lis.get("filter_chains", [])):
            filters = chain.get("filters", [])
            if not any(f.get("name") == "envoy.filters.network.tcp_proxy" for f in filters):
                continue  # not a TCP chain (HTTP, or no proxying)
            checked += 1
            where = f"{lis.get('name', '?')} chain {chain.get('name') or i}"
            roles = [classify(f, ecds) for f in filters]
            if "istio_exchange" in roles:
                problems.append(f"{where}: Istio's own {ISTIO_TCP_EXCHANGE} is still on")
            if "server_exchange" not in roles:
                problems.append(f"{where}: no server-side istio_tcp_telemetry exchange")
                continue
            first = roles.index("server_exchange")
            before = [f.get("name") for f, r in zip(filters[:first], roles[:first])
                      if r in ("reader", "stats", "istio_exchange", "client_exchange")]
            if before:
                problems.append(f"{where}: the exchange comes after {before}")
    if checked == 0:
        problems.append("no inbound chain with tcp_proxy found")
    return problems, checked


def run(cmd):
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)}: {out.stderr.strip()}")
    return out.stdout


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("pods", nargs="*", help="POD.NAMESPACE (read with istioctl)")
    ap.add_argument("-l", "--selector", help="check every pod with these labels (kubectl)")
    ap.add_argument("-f", "--file", action="append", default=[], help="config_dump or listener JSON")
    ap.add_argument("--context", help="kubectl/istioctl context (one cluster of a multi-cluster mesh)")
    args = ap.parse_args()
    ctx = ["--context", args.context] if args.context else []

    targets = [("file", f) for f in args.file] + [("pod", p) for p in args.pods]
    try:
        if args.selector:
            names = run(["kubectl", *ctx, "get", "pods", "-A", "-l", args.selector, "-o",
                         "jsonpath={range .items[*]}{.metadata.name}.{.metadata.namespace} {end}"])
            targets += [("pod", p) for p in names.split()]
    except RuntimeError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if not targets:
        ap.print_usage(sys.stderr)
        return 2

    failed = 0
    for kind, target in targets:
        try:
            if kind == "file":
                text = sys.stdin.read() if target == "-" else open(target, encoding="utf-8").read()
            else:
                text = run(["istioctl", *ctx, "proxy-config", "listener", target, "-o", "json"])
            problems, checked = check_proxy(json.loads(text))
        except (OSError, RuntimeError, ValueError) as e:
            print(f"error: {target}: {e}", file=sys.stderr)
            return 2
        if problems:
            failed += 1
            print(f"FAIL {target}")
            for p in problems:
                print(f"  {p}")
        else:
            print(f"ok   {target}: {checked} inbound TCP chain(s) run the server exchange first")
    print(f"{len(targets) - failed}/{len(targets)} proxies ready for the client side")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
