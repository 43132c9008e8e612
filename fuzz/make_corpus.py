#!/usr/bin/env python3
"""Writes the seed corpus under fuzz/corpus/<target>/ (re-run after changing an input layout).

Each target's input layout is documented at the top of its fuzz_targets/<target>.rs. Seeds are
small: a few real frames (tests/fixtures/golden), pairs blobs like Envoy's node metadata, the
configurations the tests and manifests use, and short event scripts for the exchange.
"""
import pathlib
import struct

ROOT = pathlib.Path(__file__).resolve().parent
GOLDEN = ROOT.parent / "tests" / "fixtures" / "golden"
MAGIC = bytes.fromhex("3D230467")


def write(target, name, data):
    d = ROOT / "corpus" / target
    d.mkdir(parents=True, exist_ok=True)
    (d / name).write_bytes(data)


def golden(name):
    return (GOLDEN / f"{name}.bin").read_bytes()


SMALL = ["modern_ratings", "modern_mongodb_empty_id", "legacy_1_9", "unicode", "numbers_bools_nulls"]

# frame_decoder: [cap selector, piece count, pieces..., stream]
for g in SMALL:
    write("frame_decoder", f"{g}-whole", bytes([0, 0]) + golden(g) + b"PING")
    write("frame_decoder", f"{g}-pieces", bytes([0, 4, 1, 7, 100, 0]) + golden(g))
write("frame_decoder", "too-large", bytes([0xA0, 1, 3]) + golden("modern_ratings"))
write("frame_decoder", "four-gib", bytes([0, 0]) + MAGIC + b"\xff\xff\xff\xff" + b"data")
write("frame_decoder", "garbage-payload", bytes([0, 0]) + MAGIC + struct.pack(">I", 8) + b"\xff" * 8)
write("frame_decoder", "not-a-frame", bytes([0, 2, 1, 1]) + b"GET / HTTP/1.1\r\n\r\n")
write("frame_decoder", "half-magic", bytes([0, 0]) + MAGIC[:2] + b"x")
write("frame_decoder", "truncated", bytes([0, 1, 9]) + golden("modern_ratings")[:40])


# pairs: the blob itself (Envoy's encoding: count, sizes, NUL-terminated keys and values)
def pairs(items):
    out = struct.pack("<I", len(items))
    for k, v in items:
        out += struct.pack("<II", len(k), len(v))
    for k, v in items:
        out += k + b"\0" + v + b"\0"
    return out


labels = pairs([(b"app", b"ratings"), (b"version", b"v2")])
node = pairs([
    (b"NAME", b"ratings-v2-5d7c8b9f4-x2k9p"), (b"NAMESPACE", b"default"),
    (b"WORKLOAD_NAME", b"ratings-v2"), (b"LABELS", labels),
    (b"APP_CONTAINERS", pairs([(b"ratings", b""), (b"istio-proxy", b"")])),
    (b"STATUS_PORT", struct.pack("<d", 15021.0)), (b"INTERCEPTION", b"\x01"),
    (b"OWNER", b"kubernetes://apis/apps/v1/namespaces/default/deployments/ratings-v2"),
])
write("pairs", "node-metadata", node)
write("pairs", "labels", labels)
write("pairs", "empty", pairs([]))
nested = pairs([(b"leaf", b"x")])
for _ in range(20):
    nested = pairs([(b"k", nested)])
write("pairs", "deep", nested)
write("pairs", "lying-count", struct.pack("<I", 0x40000000))
write("pairs", "huge-sizes", struct.pack("<III", 1, 0xFFFFFFFF, 0xFFFFFFFF) + b"\0\0")

# configs: [mode, ...]; mode 0 = raw JSON bytes, 1/2 = assembled exchange/stats JSON
RAW = {
    "exchange-client": b'{"side":"client"}',
    "exchange-server": b'{"side":"server","server_mode":"detect","trust":"mtls_only"}',
    "exchange-full": b'{"side":"client","client_gate":"always","max_frame_bytes":65536,'
                     b'"additional_labels":["team"],"stat_prefix":"metadata_exchange"}',
    "stats-empty": b"{}",
    "stats-override": b'{"tcp_reporting_duration":"15s","reporter":"destination",'
                      b'"max_series_per_metric":1000,"metrics":[{"name":"tcp_sent_bytes_total",'
                      b'"tags_to_remove":["source_principal"],"dimensions":{"team":"destination_labels.team"}}]}',
    "stats-definition": b'{"definitions":[{"name":"istio_mongo_received_bytes","value":"bytes_received",'
                        b'"dimensions":{"destination_version":"destination_version","source_service":'
                        b'"source_canonical_service"},"match":{"destination_service_name":"mongodb"}}]}',
    "not-json": b"not json",
    "blank": b"  ",
}
for name, text in RAW.items():
    write("configs", name, b"\0" + text)
write("configs", "assembled-exchange", bytes([1, 3, 0, 0, 3, 3, 6, 8]))
write("configs", "assembled-stats", bytes([2, 4, 0, 1, 3, 1, 0, 1, 2, 0, 1, 4, 1, 2, 0, 1, 2]))

# exchange_glue: [role, cap, frame choice, events...]; role 0 client tls_mode_istio (bit 7:
# mesh), 1 always, 2 never, 3 server expect, 4 server detect, 5 client istio_mtls. Events: op,
# then its bytes (0 len bytes: incoming; 1 n: next piece of the frame; 2 len bytes: outgoing;
# 3 len bytes: incoming + end; 4: outgoing end; 5 b: gate; 6: empty incoming; 7: whole frame +
# app bytes; 8: tick; 9: close).
def script(role, cap, frame, *events):
    return bytes([role, cap, frame]) + b"".join(bytes(e) for e in events)


out = [2, 5] + list(b"hello")
write("exchange_glue", "client-first", script(0x80, 3, 0, out, [7], [2, 3, 1, 2, 3], [4], [3, 0]))
write("exchange_glue", "server-expect-pieces", script(3, 3, 0, [1, 5], [1, 63], [1, 63], [1, 63],
                                                         [1, 63], [1, 63], [1, 63], [1, 63], [1, 63],
                                                         [1, 63], [1, 63], [1, 63], out, [3, 0]))
write("exchange_glue", "server-detect", script(4, 3, 1, [7], out, [3, 0], [4]))
write("exchange_glue", "detect-server-first", script(4, 3, 0, out, [7], [3, 0]))
write("exchange_glue", "wrong-type", script(3, 0, 4, [1, 40], [1, 40], out, [3, 0]))
write("exchange_glue", "garbage-payload", script(1, 0, 5, [7], [3, 0]))
write("exchange_glue", "istio-mtls-first", script(0x85, 3, 0, out, [7], [8], [9]))
write("exchange_glue", "gate-closed", script(0, 3, 0, [5, 0], out, [7], [3, 0]))
write("exchange_glue", "truncated-at-end", script(3, 3, 0, [1, 20], [6], [3, 0]))
write("exchange_glue", "not-a-frame", script(3, 3, 0, [0, 4] + list(b"PING"), out, [4], [3, 0]))
