//! Envoy's response flags as the `response_flags` label shows them.
//!
//! The Wasm host exposes the flags as the property `response.flags`: a u64 (8 bytes,
//! little-endian) whose bit `i` is Envoy's `CoreResponseFlag` enum value `i`
//! (`envoy/stream_info/stream_info.h`, Envoy 1.40). [`short_string`] renders it like
//! `ResponseFlagUtils::toShortString`: the short codes joined with `,`, or `-` when none.
//!
//! One difference cannot be avoided: Envoy lists the flags in the order they were set on the
//! stream, while a bitmask only knows which are set, so they come out in enum order here.
//! Custom (extension-registered) flags are not in the bitmask and bits beyond the known enum
//! values are ignored.

/// Short codes indexed by `CoreResponseFlag` value (Envoy 1.40, `FailedLocalHealthCheck` = 0 …
/// `UnconditionalDropOverload` = 29).
pub const SHORT_CODES: [&str; 30] = [
    "LH",    // 0 FailedLocalHealthCheck
    "UH",    // 1 NoHealthyUpstream
    "UT",    // 2 UpstreamRequestTimeout
    "LR",    // 3 LocalReset
    "UR",    // 4 UpstreamRemoteReset
    "UF",    // 5 UpstreamConnectionFailure
    "UC",    // 6 UpstreamConnectionTermination
    "UO",    // 7 UpstreamOverflow
    "NR",    // 8 NoRouteFound
    "DI",    // 9 DelayInjected
    "FI",    // 10 FaultInjected
    "RL",    // 11 RateLimited
    "UAEX",  // 12 UnauthorizedExternalService
    "RLSE",  // 13 RateLimitServiceError
    "DC",    // 14 DownstreamConnectionTermination
    "URX",   // 15 UpstreamRetryLimitExceeded
    "SI",    // 16 StreamIdleTimeout
    "IH",    // 17 InvalidEnvoyRequestHeaders
    "DPE",   // 18 DownstreamProtocolError
    "UMSDR", // 19 UpstreamMaxStreamDurationReached
    "RFCF",  // 20 ResponseFromCacheFilter
    "NFCF",  // 21 NoFilterConfigFound
    "DT",    // 22 DurationTimeout
    "UPE",   // 23 UpstreamProtocolError
    "NC",    // 24 NoClusterFound
    "OM",    // 25 OverloadManager
    "DF",    // 26 DnsResolutionFailed
    "DO",    // 27 DropOverLoad
    "DR",    // 28 DownstreamRemoteReset
    "UDO",   // 29 UnconditionalDropOverload
];

/// What Envoy prints when no flag is set.
pub const NONE: &str = "-";

/// The short form of a flags bitmask: `UF,URX`, or `-`.
pub fn short_string(bits: u64) -> String {
    let codes: Vec<&str> = SHORT_CODES
        .iter()
        .enumerate()
        .filter(|(i, _)| bits & (1u64 << i) != 0)
        .map(|(_, code)| *code)
        .collect();
    if codes.is_empty() {
        NONE.to_string()
    } else {
        codes.join(",")
    }
}

/// Reads the `response.flags` property: exactly 8 bytes little-endian; anything else is 0.
pub fn from_property(bytes: &[u8]) -> u64 {
    <[u8; 8]>::try_from(bytes).map_or(0, u64::from_le_bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn none_is_a_dash() {
        assert_eq!(short_string(0), "-");
    }

    #[test]
    fn flags_in_enum_order() {
        assert_eq!(short_string(1 << 5), "UF");
        assert_eq!(short_string((1 << 15) | (1 << 5)), "UF,URX");
        assert_eq!(short_string(1), "LH");
        assert_eq!(short_string(1 << 29), "UDO");
        assert_eq!(short_string((1 << 14) | (1 << 22)), "DC,DT");
        assert_eq!(short_string((1 << 30) - 1).split(',').count(), 30);
    }

    #[test]
    fn unknown_bits_are_ignored() {
        assert_eq!(short_string(1 << 30), "-");
        assert_eq!(short_string(!((1u64 << 30) - 1)), "-");
        assert_eq!(short_string(u64::MAX).split(',').count(), 30);
    }

    #[test]
    fn reads_the_property() {
        assert_eq!(from_property(&(1u64 << 5).to_le_bytes()), 32);
        assert_eq!(from_property(&[]), 0);
        assert_eq!(from_property(&[1, 2, 3]), 0);
        assert_eq!(from_property(&[0xFF; 9]), 0);
    }
}
