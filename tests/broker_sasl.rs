//! SASL authentication (`--sasl-users`): SCRAM-SHA-256, SCRAM-SHA-512 and PLAIN
//! with three independent client implementations (librdkafka through kcat,
//! KafkaJS, kafka-python), wrong passwords refused, nothing but ApiVersions and
//! the SASL requests served before authentication, and bad settings refused at
//! start.

mod broker_support;

use std::{
    io::{Read, Write},
    net::TcpStream,
    process::Command,
    time::Duration,
};

use broker_support::{
    assert_refused_at_start, kafkajs_client, kcat, metric, python_client, run, scrape, tagged,
    wire, Broker,
};

const USERS: &str = r#"{"alice": "alice-secret", "bob": "b=b,0"}"#;

fn sasl_broker(dir: &std::path::Path) -> Broker {
    let users = dir.join("users.json");
    std::fs::write(&users, USERS).unwrap();
    Broker::start(
        &dir.join("data"),
        &[
            "--sasl-users",
            users.to_str().unwrap(),
            "--metrics-listen",
            "127.0.0.1:0",
        ],
    )
}

/// kcat's arguments for SASL_PLAINTEXT as `user` with `mechanism`, then `rest`.
fn kcat_sasl(
    addr: &str,
    mechanism: &str,
    user: &str,
    password: &str,
    rest: &[&str],
) -> Vec<String> {
    let mut a: Vec<String> = ["-b", addr, "-X", "security.protocol=sasl_plaintext"]
        .iter()
        .map(|s| (*s).to_string())
        .collect();
    for kv in [
        format!("sasl.mechanisms={mechanism}"),
        format!("sasl.username={user}"),
        format!("sasl.password={password}"),
    ] {
        a.extend(["-X".to_string(), kv]);
    }
    a.extend(rest.iter().map(|s| (*s).to_string()));
    a
}

/// kcat produces `kcat-<mechanism>` to `topic` as `user` with each mechanism;
/// returns the values.
fn kcat_produce_each_mechanism(addr: &str, topic: &str, user: &str, password: &str) -> Vec<String> {
    ["SCRAM-SHA-256", "SCRAM-SHA-512", "PLAIN"]
        .into_iter()
        .map(|m| {
            let value = format!("kcat-{m}");
            let args = kcat_sasl(
                addr,
                m,
                user,
                password,
                &["-P", "-t", topic, "-X", "acks=all"],
            );
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            kcat(&args, format!("{value}\n").as_bytes());
            value
        })
        .collect()
}

/// Checks the `SASL` lines of each client's output (one per mechanism, in
/// order, all `ok`) and adds `<client>-<mechanism>`, the value each produced,
/// to `expected`.
fn assert_authenticated(expected: &mut Vec<String>, runs: &[(&str, &str, &[&str])]) {
    for (client, out, names) in runs {
        let results = tagged(out, "SASL");
        assert_eq!(results.len(), names.len(), "{out}");
        for (r, name) in results.iter().zip(names.iter()) {
            assert_eq!(&r[..2], [*name, "ok"], "{client}:\n{out}");
            expected.push(format!("{client}-{name}"));
        }
    }
}

/// KafkaJS with a wrong password is refused with SCRAM-SHA-512 and PLAIN.
fn assert_wrong_password_refused(addr: &str, topic: &str, user: &str, password: &str) {
    let wrong = kafkajs_client(&[
        "sasl",
        addr,
        topic,
        user,
        password,
        "scram-sha-512",
        "plain",
    ]);
    assert_eq!(
        tagged(&wrong, "SASL"),
        [
            ["scram-sha-512", "error", "KafkaJSSASLAuthenticationError"],
            ["plain", "error", "KafkaJSSASLAuthenticationError"]
        ],
        "{wrong}"
    );
}

/// Consumes `topic` with kcat as `user` and checks it holds exactly `expected`.
fn assert_stored(
    addr: &str,
    topic: &str,
    mechanism: &str,
    user: &str,
    password: &str,
    mut expected: Vec<String>,
) {
    let args = kcat_sasl(
        addr,
        mechanism,
        user,
        password,
        &["-C", "-t", topic, "-o", "beginning", "-e", "-q"],
    );
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let stored = String::from_utf8(kcat(&args, b"").stdout).unwrap();
    let mut stored: Vec<&str> = stored.lines().collect();
    stored.sort_unstable();
    expected.sort_unstable();
    assert_eq!(stored, expected);
}

#[test]
fn scram_and_plain_authenticate_three_client_implementations() {
    let tmp = tempfile::tempdir().unwrap();
    let broker = sasl_broker(tmp.path());
    let mut expected = kcat_produce_each_mechanism(&broker.addr, "audit", "alice", "alice-secret");
    // bob's password holds ',' and '=', which SCRAM escapes in names only.
    let js = kafkajs_client(&[
        "sasl",
        &broker.addr,
        "audit",
        "bob",
        "b=b,0",
        "scram-sha-256",
        "scram-sha-512",
        "plain",
    ]);
    let py = python_client(
        "kafka_python_client.py",
        &[
            "sasl",
            &broker.addr,
            "audit",
            "alice",
            "alice-secret",
            "SCRAM-SHA-256",
            "SCRAM-SHA-512",
            "PLAIN",
        ],
    );
    assert_authenticated(
        &mut expected,
        &[
            ("kafkajs", &js, &["scram-sha-256", "scram-sha-512", "plain"]),
            (
                "kafka-python",
                &py,
                &["SCRAM-SHA-256", "SCRAM-SHA-512", "PLAIN"],
            ),
        ],
    );
    // A wrong password: refused, for a SCRAM and a PLAIN client.
    assert_wrong_password_refused(&broker.addr, "audit", "alice", "nope");
    let args = kcat_sasl(
        &broker.addr,
        "SCRAM-SHA-256",
        "mallory",
        "x",
        &["-P", "-t", "audit", "-m", "5"],
    );
    let out = run(
        Command::new("kcat").args(&args),
        b"forged\n",
        Duration::from_secs(60),
    );
    assert!(!out.status.success(), "an unknown user was served");

    // Everything acknowledged is there, nothing else.
    assert_stored(
        &broker.addr,
        "audit",
        "SCRAM-SHA-512",
        "bob",
        "b=b,0",
        expected,
    );

    let m = scrape(&broker);
    // kcat 4, KafkaJS 3, kafka-python 3 (each may connect more than once).
    assert!(
        metric(
            &m,
            r#"streamline_sasl_authentications_total{result="success"}"#
        ) >= 10.0
    );
    // KafkaJS twice, kcat at least once (librdkafka retries).
    assert!(
        metric(
            &m,
            r#"streamline_sasl_authentications_total{result="failure"}"#
        ) >= 3.0
    );
}

/// A users file without the password: `streamline-scram` salts the credentials,
/// and three client implementations authenticate against them with SCRAM and
/// PLAIN.
#[test]
fn salted_credentials_from_streamline_scram_authenticate_real_clients() {
    let tmp = tempfile::tempdir().unwrap();
    let made = run(
        Command::new(env!("CARGO_BIN_EXE_streamline-scram")).args(["erin", "--iterations", "8192"]),
        b"erin-secret\n",
        Duration::from_secs(30),
    );
    assert!(made.status.success(), "{made:?}");
    let mut users: serde_json::Value = serde_json::from_slice(&made.stdout).unwrap();
    assert!(!String::from_utf8_lossy(&made.stdout).contains("erin-secret"));
    users["alice"] = "alice-secret".into();
    let path = tmp.path().join("users.json");
    std::fs::write(&path, users.to_string()).unwrap();
    let broker = Broker::start(
        &tmp.path().join("data"),
        &["--sasl-users", path.to_str().unwrap()],
    );
    let mut expected = kcat_produce_each_mechanism(&broker.addr, "salted", "erin", "erin-secret");
    let js = kafkajs_client(&[
        "sasl",
        &broker.addr,
        "salted",
        "erin",
        "erin-secret",
        "scram-sha-256",
        "plain",
    ]);
    let py = python_client(
        "kafka_python_client.py",
        &[
            "sasl",
            &broker.addr,
            "salted",
            "erin",
            "erin-secret",
            "SCRAM-SHA-512",
        ],
    );
    assert_authenticated(
        &mut expected,
        &[
            ("kafkajs", &js, &["scram-sha-256", "plain"]),
            ("kafka-python", &py, &["SCRAM-SHA-512"]),
        ],
    );
    assert_wrong_password_refused(&broker.addr, "salted", "erin", "erin-secreT");
    assert_stored(
        &broker.addr,
        "salted",
        "SCRAM-SHA-256",
        "alice",
        "alice-secret",
        expected,
    );
}

#[test]
fn only_api_versions_and_sasl_are_served_before_authentication() {
    let tmp = tempfile::tempdir().unwrap();
    let broker = sasl_broker(tmp.path());
    let mut c = TcpStream::connect(&broker.addr).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    // ApiVersions v0 (key 18): answered.
    c.write_all(&[0, 0, 0, 10, 0, 18, 0, 0, 0, 0, 0, 7, 0, 0])
        .unwrap();
    let mut len = [0u8; 4];
    c.read_exact(&mut len).unwrap();
    let mut body = vec![0u8; u32::from_be_bytes(len) as usize];
    c.read_exact(&mut body).unwrap();
    assert_eq!(&body[..4], &[0, 0, 0, 7], "correlation id");
    // Metadata v1 (key 3) with no topic list: the connection closes unanswered.
    c.write_all(&[
        0, 0, 0, 14, 0, 3, 0, 1, 0, 0, 0, 8, 0, 0, 0xff, 0xff, 0xff, 0xff,
    ])
    .unwrap();
    let mut rest = Vec::new();
    assert_eq!(c.read_to_end(&mut rest).unwrap(), 0, "closed: {rest:?}");
    assert!(broker
        .log_text()
        .contains("Metadata before SASL authentication"));
    // Before authentication a frame may hold at most 512 KiB: a larger length
    // closes the connection before anything is read or allocated.
    let mut big = TcpStream::connect(&broker.addr).unwrap();
    big.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    big.write_all(&(600 * 1024u32).to_be_bytes()).unwrap();
    let mut rest = Vec::new();
    assert_eq!(
        big.read_to_end(&mut rest).unwrap_or(0),
        0,
        "closed: {rest:?}"
    );
    assert!(broker.log_text().contains("before SASL authentication)"));
    // A plaintext kcat (no SASL) cannot list topics.
    let out = run(
        Command::new("kcat").args(["-b", &broker.addr, "-L", "-m", "5"]),
        b"",
        Duration::from_secs(60),
    );
    assert!(!out.status.success());
}

#[test]
fn bad_sasl_settings_stop_the_start_before_anything_is_created() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("never-created");
    let good = tmp.path().join("users.json");
    std::fs::write(&good, USERS).unwrap();
    let bad = tmp.path().join("bad.json");
    std::fs::write(&bad, "alice: secret\n").unwrap();
    let missing = tmp.path().join("missing.json");
    let cases: [(&[&str], &str); 4] = [
        (&["--sasl-users", bad.to_str().unwrap()], "bad.json"),
        (&["--sasl-users", missing.to_str().unwrap()], "missing.json"),
        (
            &[
                "--sasl-users",
                good.to_str().unwrap(),
                "--sasl-mechanisms",
                "GSSAPI",
            ],
            "--sasl-mechanisms",
        ),
        (
            &[
                "--sasl-users",
                good.to_str().unwrap(),
                "--sasl-mechanisms",
                "",
            ],
            "--sasl-mechanisms",
        ),
    ];
    for (args, names) in cases {
        assert_refused_at_start(&data, args, names);
    }
}

/// The wire protocol itself: an unknown mechanism lists the enabled ones; a
/// SaslHandshake v0 is followed by raw tokens (PLAIN here), after which the
/// connection is served; a wrong raw token closes it unanswered; a second
/// handshake on an authenticated connection is an illegal state.
#[test]
fn handshake_v0_raw_tokens_and_handshake_errors() {
    use kafka_protocol::{
        messages::{ApiKey, SaslHandshakeRequest, SaslHandshakeResponse},
        protocol::StrBytes,
    };
    use wire::{closed, connect, read_frame, request_frame, response, topic_metadata};

    let tmp = tempfile::tempdir().unwrap();
    let broker = sasl_broker(tmp.path());
    let handshake = |s: &mut TcpStream, version: i16, mechanism: &'static str| {
        let req =
            SaslHandshakeRequest::default().with_mechanism(StrBytes::from_static_str(mechanism));
        s.write_all(&request_frame(ApiKey::SaslHandshake, version, 1, &req))
            .unwrap();
        let (_, r): (i32, SaslHandshakeResponse) = response(s, ApiKey::SaslHandshake, version);
        let listed: Vec<String> = r.mechanisms.iter().map(|m| m.to_string()).collect();
        (r.error_code, listed)
    };
    let raw = |s: &mut TcpStream, token: &[u8]| {
        s.write_all(&(token.len() as u32).to_be_bytes()).unwrap();
        s.write_all(token).unwrap();
    };

    let mut s = connect(&broker.addr);
    assert_eq!(
        handshake(&mut s, 1, "GSSAPI"),
        (
            33,
            vec![
                "SCRAM-SHA-512".into(),
                "SCRAM-SHA-256".into(),
                "PLAIN".into()
            ]
        ),
        "UNSUPPORTED_SASL_MECHANISM with the enabled list"
    );
    assert_eq!(handshake(&mut s, 0, "PLAIN").0, 0);
    raw(&mut s, b"\0alice\0alice-secret");
    assert_eq!(
        read_frame(&mut s).map(|b| b.len()),
        Some(0),
        "an empty raw token back"
    );
    assert_eq!(
        topic_metadata(&mut s, "after-v0", true),
        0,
        "served once authenticated"
    );
    assert_eq!(handshake(&mut s, 1, "PLAIN").0, 34, "ILLEGAL_SASL_STATE");
    assert_eq!(topic_metadata(&mut s, "after-v0", false), 0, "still served");

    let mut s = connect(&broker.addr);
    assert_eq!(handshake(&mut s, 0, "PLAIN").0, 0);
    raw(&mut s, b"\0alice\0wrong");
    assert!(closed(&mut s), "a wrong raw token closes the connection");
}
