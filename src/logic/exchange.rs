//! The metadata-exchange state machine for one connection, free of any host call.
//!
//! Wasm cannot write bytes on its own, so both frames ride on data that is already flowing:
//! - **outgoing** bytes (towards the mesh peer) carry our frame, prepended to the first non-empty
//!   chunk, once the gate allows it;
//! - **incoming** bytes (from the mesh peer) are fed to a [`FrameDecoder`]; while it needs more,
//!   the chunk is held (paused; never at end of stream, where Envoy would drop it). A complete,
//!   well-formed frame is stripped; anything else passes through byte for byte.
//!
//! On the client (outbound listener) outgoing is the downstream direction; on the server
//! (inbound listener) outgoing is the upstream direction. The glue maps directions; this module
//! decides. Invariant (fuzzed): the bytes delivered equal the bytes received minus exactly one
//! stripped frame, which is the whole of a frame that had the magic, a length under the cap and
//! all its payload (in detect mode, a payload that parses as a protobuf `Any`).

use super::exchange_config::{ClientGate, Role};
use super::frame::{Decoded, FrameDecoder, Malformed, PeerFrame, MAGIC_BYTES};

/// Counters with Istio's names. "ALPN found" maps to our gate decision (see README).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Counter {
    AlpnProtocolFound,
    AlpnProtocolNotFound,
    InitialHeaderNotFound,
    HeaderNotFound,
    MetadataAdded,
}

impl Counter {
    pub const ALL: [Counter; 5] = [
        Counter::AlpnProtocolFound,
        Counter::AlpnProtocolNotFound,
        Counter::InitialHeaderNotFound,
        Counter::HeaderNotFound,
        Counter::MetadataAdded,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Counter::AlpnProtocolFound => "alpn_protocol_found",
            Counter::AlpnProtocolNotFound => "alpn_protocol_not_found",
            Counter::InitialHeaderNotFound => "initial_header_not_found",
            Counter::HeaderNotFound => "header_not_found",
            Counter::MetadataAdded => "metadata_added",
        }
    }

    /// The name given to Envoy: `envoy_<stat_prefix>.<counter>`. Envoy files Wasm metrics under
    /// `wasmcustom.` and prints them in Prometheus without that namespace and without the
    /// `envoy_` every native stat gets; Istio's native filter is a native stat
    /// (`<stat_prefix>.<counter>`, so `envoy_metadata_exchange_alpn_protocol_found`). Adding the
    /// `envoy_` here gives the same Prometheus name, so Istio's dashboards and alerts work.
    pub fn stat_name(self, stat_prefix: &str) -> String {
        format!("envoy_{stat_prefix}.{}", self.name())
    }
}

/// Why the peer is decidedly unknown.
#[derive(Debug, Clone, PartialEq)]
pub enum NotFound {
    /// Client: the endpoint is not a mesh endpoint (gate closed), so nothing was exchanged.
    GateClosed,
    /// The peer's first bytes are not the magic: it does not speak the protocol.
    NotAFrame,
    /// The declared payload length is over `max_frame_bytes`.
    TooLarge { declared: u32 },
    /// The frame arrived whole but its payload is unusable (it is still stripped).
    Malformed(Malformed),
    /// The stream ended (or the host failed) in the middle of a frame.
    Truncated { bytes: usize },
    /// Detect mode: a valid-looking header whose payload is not a `google.protobuf.Any`. That
    /// is no proof of a mesh peer, so every byte passes through untouched.
    Lookalike { frame_len: usize },
    /// The connection closed before anything decided the peer (e.g. it carried no bytes).
    ClosedUndecided,
}

impl NotFound {
    /// Whether this is a plain "no mesh peer" (debug) or a broken peer worth a warning.
    /// Nothing a peer on a detect chain can send is worth one: that chain is open to any client.
    /// Elsewhere the glue rate-limits the warnings (the counters count every case).
    pub fn is_warning(&self, role: Role) -> bool {
        match self {
            NotFound::GateClosed | NotFound::ClosedUndecided | NotFound::Lookalike { .. } => false,
            _ => role != Role::ServerDetect,
        }
    }
}

impl std::fmt::Display for NotFound {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            NotFound::GateClosed => write!(f, "endpoint is not a mesh endpoint; no exchange"),
            NotFound::NotAFrame => write!(f, "peer's first bytes are not the exchange magic"),
            NotFound::TooLarge { declared } => {
                write!(
                    f,
                    "peer frame declares {declared} bytes, over max_frame_bytes"
                )
            }
            NotFound::Malformed(why) => write!(f, "peer frame is malformed: {why}"),
            NotFound::Truncated { bytes } => {
                write!(f, "stream ended {bytes} bytes into the peer frame")
            }
            NotFound::Lookalike { frame_len } => write!(
                f,
                "{frame_len} bytes look like a frame but the payload is not a \
                 google.protobuf.Any; passed through untouched"
            ),
            NotFound::ClosedUndecided => write!(f, "connection closed before the peer was known"),
        }
    }
}

/// Something the glue must record: a counter, or the peer's fate in filter state.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    Count(Counter),
    PeerFound(PeerFrame),
    PeerNotFound(NotFound),
}

/// What to do with the chunk of a data callback.
#[derive(Debug, Default, PartialEq)]
pub struct Verdict {
    /// Drop this many bytes from the front of the buffer.
    pub strip: usize,
    /// Prepend our frame to the buffer.
    pub prepend_frame: bool,
    /// Hold the buffer (return Pause). Never set at end of stream.
    pub pause: bool,
    pub events: Vec<Event>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Gate {
    Unknown,
    Open,
    Closed,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Sending {
    Pending,
    Sent,
    Skipped,
}

#[derive(Debug)]
enum Receiving {
    /// Not reading yet (client before its gate decision).
    Idle,
    Reading(FrameDecoder),
    Found,
    NotFound,
}

/// One connection's exchange.
#[derive(Debug)]
pub struct Exchange {
    role: Role,
    gate: Gate,
    sending: Sending,
    receiving: Receiving,
    /// The gate decision has been counted (by `start` or `decide_gate`).
    gate_counted: bool,
}

impl Exchange {
    pub fn new(role: Role, max_frame_bytes: u32) -> Self {
        let decoder = || Receiving::Reading(FrameDecoder::new(max_frame_bytes));
        let (gate, receiving) = match role {
            Role::Client(ClientGate::Always) => (Gate::Open, decoder()),
            Role::Client(ClientGate::Never) => (Gate::Closed, Receiving::NotFound),
            // Decided on the first data callback, from the endpoint or the upstream connection.
            Role::Client(ClientGate::TlsModeIstio | ClientGate::IstioMtls) => {
                (Gate::Unknown, Receiving::Idle)
            }
            // The chain was picked by ALPN: the peer speaks the protocol.
            Role::ServerExpect => (Gate::Open, decoder()),
            // Decided by the first incoming bytes.
            Role::ServerDetect => (Gate::Unknown, decoder()),
        };
        Exchange {
            role,
            gate,
            sending: Sending::Pending,
            receiving,
            gate_counted: false,
        }
    }

    pub fn role(&self) -> Role {
        self.role
    }

    /// True when the client still needs the endpoint's metadata to decide its gate.
    pub fn needs_endpoint_gate(&self) -> bool {
        self.gate == Gate::Unknown && matches!(self.role, Role::Client(_))
    }

    /// Events to emit for a gate fixed by configuration (`always`, `never`, server expect), on the
    /// first callback; afterwards empty.
    pub fn start(&mut self) -> Vec<Event> {
        if self.gate_counted {
            return Vec::new();
        }
        match (self.role, self.gate) {
            (_, Gate::Open) => {
                self.gate_counted = true;
                vec![Event::Count(Counter::AlpnProtocolFound)]
            }
            (Role::Client(ClientGate::Never), Gate::Closed) => {
                self.gate_counted = true;
                self.sending = Sending::Skipped;
                vec![
                    Event::Count(Counter::AlpnProtocolNotFound),
                    Event::PeerNotFound(NotFound::GateClosed),
                ]
            }
            _ => Vec::new(),
        }
    }

    /// Client: the endpoint's metadata (or, for `istio_mtls`, the upstream connection) says
    /// whether the peer is a mesh peer.
    pub fn decide_gate(&mut self, mesh_endpoint: bool, max_frame_bytes: u32) -> Vec<Event> {
        if !self.needs_endpoint_gate() {
            return Vec::new();
        }
        if mesh_endpoint {
            self.gate = Gate::Open;
            self.receiving = Receiving::Reading(FrameDecoder::new(max_frame_bytes));
            self.gate_counted = true;
            vec![Event::Count(Counter::AlpnProtocolFound)]
        } else {
            self.gate = Gate::Closed;
            self.receiving = Receiving::NotFound;
            self.sending = Sending::Skipped;
            self.gate_counted = true;
            vec![
                Event::Count(Counter::AlpnProtocolNotFound),
                Event::PeerNotFound(NotFound::GateClosed),
            ]
        }
    }

    /// Nothing left to do on this connection: the glue may skip every host call.
    pub fn is_settled(&self) -> bool {
        self.sending != Sending::Pending
            && matches!(self.receiving, Receiving::Found | Receiving::NotFound)
    }

    /// Bytes of the incoming buffer already fed to the decoder (and held there by a pause).
    pub fn held_incoming(&self) -> usize {
        match &self.receiving {
            Receiving::Reading(d) => d.consumed(),
            _ => 0,
        }
    }

    /// True while an incoming frame is half read (bytes are being held).
    pub fn is_mid_frame(&self) -> bool {
        matches!(&self.receiving, Receiving::Reading(d) if d.is_mid_frame())
    }

    /// Outgoing chunk of `len` bytes: prepend our frame to the first non-empty one if allowed.
    pub fn on_outgoing(&mut self, len: usize) -> Verdict {
        let mut verdict = Verdict::default();
        if self.sending != Sending::Pending || len == 0 {
            return verdict;
        }
        let allowed = match self.role {
            Role::Client(_) => self.gate == Gate::Open,
            // Answer a client that sent a frame, or speak first when the backend does before the
            // client sent anything (server-first). `not_found` skips sending once the client's
            // bytes showed no frame.
            Role::ServerExpect => self.gate == Gate::Open,
            // Answer only a peer that already showed a whole frame; we cannot hold the
            // backend's bytes until the client speaks (server-first protocols would deadlock).
            Role::ServerDetect => matches!(self.receiving, Receiving::Found),
        };
        if allowed {
            self.sending = Sending::Sent;
            verdict.prepend_frame = true;
            verdict.events.push(Event::Count(Counter::MetadataAdded));
        } else if self.gate != Gate::Unknown || self.role == Role::ServerDetect {
            self.sending = Sending::Skipped;
        }
        verdict
    }

    /// Incoming chunk: `new_bytes` are the bytes after [`Exchange::held_incoming`].
    pub fn on_incoming(&mut self, new_bytes: &[u8], end_of_stream: bool) -> Verdict {
        let mut verdict = Verdict::default();
        let Receiving::Reading(decoder) = &mut self.receiving else {
            return verdict;
        };
        let (_, answer) = decoder.feed(new_bytes);
        match answer {
            Decoded::NeedMore if end_of_stream => {
                let bytes = decoder.consumed();
                if bytes == 0 {
                    // Closed before sending anything: nothing to learn, nothing to count.
                    return verdict;
                }
                let counter = if bytes < super::frame::HEADER_LEN {
                    Counter::InitialHeaderNotFound
                } else {
                    Counter::HeaderNotFound
                };
                self.count_no_frame(&mut verdict, counter);
                self.not_found(&mut verdict, NotFound::Truncated { bytes });
            }
            Decoded::NeedMore => verdict.pause = true,
            Decoded::NotAFrame => {
                self.count_no_frame(&mut verdict, Counter::InitialHeaderNotFound);
                self.not_found(&mut verdict, NotFound::NotAFrame);
            }
            Decoded::TooLarge { declared } => {
                self.count_detected(&mut verdict);
                verdict.events.push(Event::Count(Counter::HeaderNotFound));
                self.not_found(&mut verdict, NotFound::TooLarge { declared });
            }
            Decoded::Malformed {
                frame_len,
                reason: Malformed::BadAny,
            } if self.role == Role::ServerDetect => {
                // Not proof of an exchange frame: leave every byte, header included.
                self.count_no_frame(&mut verdict, Counter::InitialHeaderNotFound);
                self.not_found(&mut verdict, NotFound::Lookalike { frame_len });
            }
            Decoded::Malformed { frame_len, reason } => {
                self.count_detected(&mut verdict);
                verdict.events.push(Event::Count(Counter::HeaderNotFound));
                verdict.strip = frame_len;
                self.not_found(&mut verdict, NotFound::Malformed(reason));
            }
            Decoded::Complete(frame) => {
                self.count_detected(&mut verdict);
                verdict.strip = frame.frame_len;
                verdict.events.push(Event::PeerFound(frame));
                self.receiving = Receiving::Found;
            }
        }
        verdict
    }

    /// The connection is closing: a peer nothing decided yet (no bytes, or bytes still held) is
    /// decidedly absent, so filter state (access logs) agrees with the stats' `unknown` peer.
    pub fn on_close(&mut self) -> Vec<Event> {
        if let Receiving::Found | Receiving::NotFound = self.receiving {
            return Vec::new();
        }
        self.receiving = Receiving::NotFound;
        if self.sending == Sending::Pending {
            self.sending = Sending::Skipped;
        }
        vec![Event::PeerNotFound(NotFound::ClosedUndecided)]
    }

    /// The host failed mid-exchange (e.g. a buffer read): stop reading, deliver what is held.
    pub fn abandon(&mut self) -> Vec<Event> {
        let mut verdict = Verdict::default();
        if let Receiving::Reading(d) = &self.receiving {
            let bytes = d.consumed();
            verdict.events.push(Event::Count(Counter::HeaderNotFound));
            self.not_found(&mut verdict, NotFound::Truncated { bytes });
        }
        if self.sending == Sending::Pending {
            self.sending = Sending::Skipped;
        }
        verdict.events
    }

    /// The peer's bytes are not (a whole) frame: in detect mode that only means "not a mesh
    /// peer"; where a frame was expected it is the given error counter.
    fn count_no_frame(&mut self, verdict: &mut Verdict, expected_counter: Counter) {
        let counter = if self.role == Role::ServerDetect {
            self.gate = Gate::Closed;
            Counter::AlpnProtocolNotFound
        } else {
            expected_counter
        };
        verdict.events.push(Event::Count(counter));
    }

    fn count_detected(&mut self, verdict: &mut Verdict) {
        if self.role == Role::ServerDetect && self.gate == Gate::Unknown {
            self.gate = Gate::Open;
            verdict
                .events
                .push(Event::Count(Counter::AlpnProtocolFound));
        }
    }

    fn not_found(&mut self, verdict: &mut Verdict, why: NotFound) {
        self.receiving = Receiving::NotFound;
        // Expect mode: a client whose bytes did not start with the magic runs no exchange (e.g.
        // it offered the ALPN without the filter): our frame would reach its application.
        let client_sent_no_frame = match why {
            NotFound::NotAFrame => true,
            NotFound::Truncated { bytes } => bytes < MAGIC_BYTES.len(),
            _ => false,
        };
        let stop_sending = match self.role {
            Role::ServerDetect => true,
            Role::ServerExpect => client_sent_no_frame,
            Role::Client(_) => false,
        };
        if stop_sending && self.sending == Sending::Pending {
            self.sending = Sending::Skipped;
        }
        verdict.events.push(Event::PeerNotFound(why));
    }
}

#[cfg(test)]
#[path = "exchange_tests.rs"]
mod tests;
