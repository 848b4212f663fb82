//! Raw Kafka wire helpers over a blocking `TcpStream`: frame a request with the
//! `kafka-protocol` codecs, read and decode a response, tell a closed connection.

use std::{io::Read, net::TcpStream, time::Duration};

use bytes::{BufMut, Bytes, BytesMut};
use kafka_protocol::{
    messages::{ApiKey, RequestHeader, ResponseHeader},
    protocol::{Decodable, Encodable, StrBytes},
};

/// The client id of every request framed here.
pub const CLIENT_ID: &str = "protocol-test";

/// Connects to `addr` with a 20 s read timeout (a hung broker fails the test).
pub fn connect(addr: &str) -> TcpStream {
    let s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    s
}

/// One length-prefixed request frame: header (client id [`CLIENT_ID`]) and body.
pub fn request_frame<R: Encodable>(
    key: ApiKey,
    version: i16,
    correlation_id: i32,
    body: &R,
) -> Vec<u8> {
    let mut buf = BytesMut::new();
    buf.put_i32(0);
    RequestHeader::default()
        .with_request_api_key(key as i16)
        .with_request_api_version(version)
        .with_correlation_id(correlation_id)
        .with_client_id(Some(StrBytes::from_static_str(CLIENT_ID)))
        .encode(&mut buf, key.request_header_version(version))
        .unwrap();
    body.encode(&mut buf, version).unwrap();
    let len = (buf.len() - 4) as i32;
    buf[..4].copy_from_slice(&len.to_be_bytes());
    buf.to_vec()
}

/// Reads one response frame; `None` when the server closed the connection.
pub fn read_frame(s: &mut TcpStream) -> Option<Bytes> {
    let mut len = [0u8; 4];
    s.read_exact(&mut len).ok()?;
    let mut buf = vec![0u8; i32::from_be_bytes(len) as usize];
    s.read_exact(&mut buf).ok()?;
    Some(Bytes::from(buf))
}

/// Reads and decodes one response: its correlation id and body.
pub fn response<R: Decodable>(s: &mut TcpStream, key: ApiKey, version: i16) -> (i32, R) {
    let mut b = read_frame(s).expect("a response");
    let h = ResponseHeader::decode(&mut b, key.response_header_version(version)).unwrap();
    (h.correlation_id, R::decode(&mut b, version).unwrap())
}

/// Whether the server closed the connection: end of stream or a reset, not data
/// and not the read timeout running out.
pub fn closed(s: &mut TcpStream) -> bool {
    let mut b = [0u8; 1];
    match s.read(&mut b) {
        Ok(n) => n == 0,
        Err(e) => !matches!(
            e.kind(),
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
        ),
    }
}
