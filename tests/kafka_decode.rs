//! Hostile bytes for the Kafka request decoder: arbitrary frames, and frames with a
//! valid header for every API and version the broker serves followed by arbitrary
//! bytes, never panic, and absurd array lengths do not abort the process (the test
//! installs the broker's allocator, as the binary does).

use bytes::{BufMut, Bytes, BytesMut};
use proptest::prelude::*;
use streamline::server::{decode_request, supported_api_versions, Decoded};

#[global_allocator]
static ALLOCATOR: streamline::huge_alloc::HugeAllocGuard = streamline::huge_alloc::HugeAllocGuard;

/// A v1/v2 request header (key, version, correlation id, client id) then `body`.
fn frame(key: i16, version: i16, body: &[u8], flexible_tags: bool) -> Bytes {
    let mut b = BytesMut::new();
    b.put_i16(key);
    b.put_i16(version);
    b.put_i32(7);
    b.put_i16(4);
    b.put_slice(b"fuzz");
    if flexible_tags {
        b.put_u8(0); // no tagged fields in the header
    }
    b.put_slice(body);
    b.freeze()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_frames_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
        let _ = decode_request(Bytes::from(bytes));
    }

    #[test]
    fn valid_headers_with_arbitrary_bodies_never_panic(
        pick in any::<prop::sample::Index>(),
        body in proptest::collection::vec(any::<u8>(), 0..512),
        flexible in any::<bool>(),
    ) {
        let apis = supported_api_versions();
        let (key, lo, hi) = apis[pick.index(apis.len())];
        for version in lo..=hi {
            let _ = decode_request(frame(key, version, &body, flexible));
        }
    }
}

#[test]
fn absurd_array_lengths_fail_the_request_not_the_process() {
    // CreateTopics v2: a topics array length of 100,000 (the most counted
    // lists may hold) with no elements behind it.
    let create_topics = 100_000i32.to_be_bytes();
    match decode_request(frame(19, 2, &create_topics, false)) {
        Err(msg) => assert!(msg.contains("malformed"), "{msg}"),
        Ok(d) => panic!("decoded a frame that claims 100,000 topics: {d:?}"),
    }
    // Metadata v1, Produce v3 (no transactional id, acks -1, timeout 1 s),
    // ListOffsets v1 (replica id -1) and CreateTopics v2: their lists are
    // counted before decoding.
    let metadata = i32::MAX.to_be_bytes().to_vec();
    let mut produce = vec![0xff, 0xff, 0xff, 0xff, 0, 0, 0x03, 0xe8];
    produce.extend_from_slice(&i32::MAX.to_be_bytes());
    let mut list_offsets = vec![0xff, 0xff, 0xff, 0xff];
    list_offsets.extend_from_slice(&i32::MAX.to_be_bytes());
    let create_topics = i32::MAX.to_be_bytes().to_vec();
    let bodies = [
        (3, 1, metadata),
        (0, 3, produce),
        (2, 1, list_offsets),
        (19, 2, create_topics),
    ];
    for (key, version, body) in bodies {
        match decode_request(frame(key, version, &body, false)) {
            Err(msg) => assert!(msg.contains("at most 100000 are accepted"), "{msg}"),
            Ok(d) => panic!("decoded a frame that claims 2^31 topics: {d:?}"),
        }
    }
}

/// A Fetch's forgotten partitions were skipped by the walk without being
/// counted: the decoder reserved room for a stated length of 2^32 - 2 before
/// reading an entry (16 GiB), which aborts a broker where the allocator cannot
/// reserve that much address space (Windows, or a memory limit). They are
/// counted over all forgotten topics now, and refused before decoding.
#[test]
fn absurd_lengths_of_forgotten_partitions_are_refused_before_decoding() {
    // A compact array's length, plus one, as an unsigned varint.
    let huge = [0xff, 0xff, 0xff, 0xff, 0x0f];
    // Fetch v12: replica id, max wait, min bytes, max bytes, isolation level,
    // session id and epoch, no topics; one forgotten topic "t" with the huge
    // list of partitions.
    let mut fetch = vec![0xff, 0xff, 0xff, 0xff, 0, 0, 1, 0xf4, 0, 0, 0, 1];
    fetch.extend_from_slice(&[0, 0x10, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
    fetch.push(0x01); // no topics
    fetch.extend_from_slice(&[0x02, 0x02, b't']); // one forgotten topic, "t"
    fetch.extend_from_slice(&huge);
    match decode_request(frame(1, 12, &fetch, true)) {
        Err(msg) => assert!(
            msg.contains("lists 4294967294 forgotten partitions; at most 100000 are accepted"),
            "{msg}"
        ),
        Ok(d) => panic!("decoded a frame that claims 2^32 - 2 forgotten partitions: {d:?}"),
    }
}

#[test]
fn unsupported_api_versions_gets_the_v0_fallback() {
    match decode_request(frame(18, 99, &[], true)) {
        Ok(Decoded::UnsupportedApiVersions { correlation_id }) => assert_eq!(correlation_id, 7),
        other => panic!("expected the ApiVersions fallback, got {other:?}"),
    }
}
