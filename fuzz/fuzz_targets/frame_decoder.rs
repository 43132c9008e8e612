//! `FrameDecoder` on arbitrary bytes in arbitrary fragmentations.
//!
//! Input: `[cap selector, piece count, piece lengths…, stream…]`. The decoder is fed the stream
//! in those pieces (the last piece is the rest), then the answer is compared with a one-shot
//! decode of the same bytes and with what the header and `parse_payload` say about them.

#![no_main]

mod common;

use common::Bytes;
use istio_tcp_telemetry::logic::exchange::frame::{
    encode_payload, parse_payload, Decoded, FrameDecoder, HEADER_LEN, MAGIC_BYTES,
};
use istio_tcp_telemetry::logic::exchange::memo::PayloadMemo;
use istio_tcp_telemetry::logic::stats::MetricPlan;
use istio_tcp_telemetry::logic::workload::WorkloadMetadata;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut input = Bytes { data };
    // Mostly the default cap (golden frames fit); sometimes a small one, to reach TooLarge.
    let selector = input.u8();
    let cap: u32 = if selector < 128 {
        64 * 1024
    } else {
        u32::from(selector - 128) * 8
    };
    let pieces: Vec<usize> = (0..input.u8() % 16)
        .map(|_| usize::from(input.u8()))
        .collect();
    let stream = input.data;

    // One memo for both decodes, as a root lends it to every connection: the second decode
    // of the same payload is a memo hit and must give the same answer.
    let mut memo = PayloadMemo::default();
    let (whole_taken, whole) = FrameDecoder::new(cap).feed(stream, &mut memo);
    check_answer(stream, cap, whole_taken, &whole);

    let mut decoder = FrameDecoder::new(cap);
    let mut rest = stream;
    let mut taken_total = 0;
    let mut last = Decoded::NeedMore;
    let mut final_answer: Option<Decoded> = None;
    for piece in pieces.iter().copied().chain([usize::MAX]) {
        let (chunk, after) = rest.split_at(piece.min(rest.len()));
        rest = after;
        let (taken, answer) = decoder.feed(chunk, &mut memo);
        assert!(
            taken <= chunk.len(),
            "took {taken} of a {}-byte chunk",
            chunk.len()
        );
        assert!(decoder.consumed() <= HEADER_LEN + cap as usize);
        if let Some(done) = &final_answer {
            assert_eq!(taken, 0, "took bytes after a final answer");
            assert!(same(&answer, done), "answer changed after it was final");
        } else {
            taken_total += taken;
            if answer.is_final() {
                final_answer = Some(answer.clone());
                assert!(!decoder.is_mid_frame());
            } else {
                assert_eq!(taken, chunk.len(), "NeedMore must take every byte");
            }
        }
        last = answer;
    }
    // Fragmentation never changes the outcome.
    assert!(
        same(&last, &whole),
        "fragmented {last:?} vs one-shot {whole:?}"
    );
    assert_eq!(
        taken_total, whole_taken,
        "bytes taken, fragmented vs one-shot"
    );
});

/// Equal answers; `Debug` text rather than `==`, because a frame may hold a NaN number.
fn same(a: &Decoded, b: &Decoded) -> bool {
    format!("{a:?}") == format!("{b:?}")
}

/// What the answer must be, from the bytes themselves.
fn check_answer(stream: &[u8], cap: u32, taken: usize, answer: &Decoded) {
    let magic_len = stream
        .iter()
        .zip(MAGIC_BYTES)
        .take_while(|(a, b)| **a == *b)
        .count();
    let declared = (stream.len() >= HEADER_LEN)
        .then(|| u32::from_be_bytes([stream[4], stream[5], stream[6], stream[7]]));
    match answer {
        Decoded::NotAFrame => {
            // Decided at the first byte that breaks the magic; the matching ones were taken.
            assert!(magic_len < 4 && magic_len < stream.len());
            assert_eq!(taken, magic_len);
        }
        Decoded::NeedMore => {
            assert_eq!(taken, stream.len());
            assert!(magic_len == stream.len().min(4));
            if let Some(d) = declared {
                assert!(d <= cap && stream.len() < HEADER_LEN + d as usize);
            }
        }
        Decoded::TooLarge { declared: d } => {
            assert_eq!(magic_len, 4);
            assert_eq!(Some(*d), declared);
            assert!(*d > cap);
            assert_eq!(taken, HEADER_LEN);
        }
        Decoded::Malformed { frame_len, reason } => {
            let payload = whole_frame(stream, cap, magic_len, declared, *frame_len, taken);
            assert_eq!(parse_payload(payload).err().as_ref(), Some(reason));
        }
        Decoded::Complete(frame) => {
            let payload = whole_frame(stream, cap, magic_len, declared, frame.frame_len, taken);
            let (metadata, id) = parse_payload(payload).expect("parse_payload agrees");
            // Compared through their encoding: a NaN number is not equal to itself.
            assert_eq!(
                encode_payload(&metadata, id.as_deref().unwrap_or("")),
                encode_payload(&frame.metadata, frame.id.as_deref().unwrap_or(""))
            );
            assert_eq!(id, frame.id);
            // Re-encoding is stable: what we would forward or log is what we decoded.
            let again = encode_payload(&frame.metadata, frame.id.as_deref().unwrap_or(""));
            let (m2, id2) = parse_payload(&again).expect("our own encoding decodes");
            assert_eq!(
                encode_payload(&m2, id2.as_deref().unwrap_or("")),
                again,
                "encoding is deterministic"
            );
            // Label values derived from the peer can never break the stat-name structure.
            let peer = WorkloadMetadata::from_exchange_struct(&frame.metadata);
            common::check_series(&MetricPlan::standard(), &peer, &peer.identity, true);
        }
    }
}

/// Checks a whole-frame answer against the header; returns the payload bytes.
fn whole_frame(
    stream: &[u8],
    cap: u32,
    magic_len: usize,
    declared: Option<u32>,
    frame_len: usize,
    taken: usize,
) -> &[u8] {
    assert_eq!(magic_len, 4);
    let d = declared.expect("a whole frame has a header");
    assert!(d <= cap);
    assert_eq!(frame_len, HEADER_LEN + d as usize);
    assert_eq!(taken, frame_len, "takes exactly the frame");
    &stream[HEADER_LEN..frame_len]
}
