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
    assert_refused_at_start, assert_refused_at_start_env, kafkajs_client, kcat, metric,
    python_client, run, scrape, tagged, wire, Broker,
};

const USERS: &str = r#"{"alice": "alice-secret", "bob": "b=b,0"}"#;

fn sasl_broker(dir: &std::path::Path) -> Broker {
    sasl_broker_with(dir, &["--metrics-listen", "127.0.0.1:0"])
}

/// A broker with `USERS` as its users file (in `dir`, its data in
/// `dir/data`) and `args`.
fn sasl_broker_with(dir: &std::path::Path, args: &[&str]) -> Broker {
    std::fs::create_dir_all(dir).unwrap();
    let users = dir.join("users.json");
    std::fs::write(&users, USERS).unwrap();
    let mut all = vec!["--sasl-users", users.to_str().unwrap()];
    all.extend_from_slice(args);
    Broker::start(&dir.join("data"), &all)
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

/// `streamline-scram` with iterations outside Kafka's 4096-16384 or a
/// mechanism that is not SCRAM waited for the password first, then refused
/// it without naming the flag. It is refused at once now, by the flag's name,
/// while standard input is still open.
#[test]
fn streamline_scram_refuses_bad_flags_before_reading_the_password() {
    for (args, flag) in [
        (["erin", "--iterations", "100"], "--iterations"),
        (["erin", "--mechanism", "PLAIN"], "--mechanism"),
    ] {
        let mut child = Command::new(env!("CARGO_BIN_EXE_streamline-scram"))
            .args(args)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        let status = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break status;
            }
            if std::time::Instant::now() > deadline {
                child.kill().unwrap();
                panic!("{args:?}: still waiting for the password after 10 s");
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let out = child.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains(flag), "{args:?}: {stderr}");
    }
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
    big.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    big.write_all(&(600 * 1024u32).to_be_bytes()).unwrap();
    assert!(
        wire::closed(&mut big),
        "a 600 KiB frame before authentication was answered, or its connection \
         stayed open for 3 s"
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
    // A FIFO at the users file's path made the start wait forever, deaf to
    // SIGINT and SIGTERM, and a link to /dev/zero read until memory ran out.
    #[cfg(unix)]
    {
        for special in &broker_support::special_files(tmp.path(), "users") {
            let path = special.to_str().unwrap();
            assert_refused_at_start(&data, &["--sasl-users", path], path);
        }
    }
    // Without --sasl-users: an unknown mechanism is refused all the same, and
    // known ones, which would leave SASL off and every client served
    // unauthenticated, need the users; from the variable too, named.
    let no_users: [(&[&str], &str); 2] = [
        (&["--sasl-mechanisms", "BOGUS"], "--sasl-mechanisms"),
        (
            &["--sasl-mechanisms", "PLAIN"],
            "--sasl-mechanisms = \"PLAIN\": needs --sasl-users",
        ),
    ];
    for (args, names) in no_users {
        assert_refused_at_start(&data, args, names);
    }
    for (value, users, names) in [
        ("BOGUS", false, "STREAMLINE_SASL_MECHANISMS = \"BOGUS\""),
        (
            "SCRAM-SHA-256",
            false,
            "STREAMLINE_SASL_MECHANISMS = \"SCRAM-SHA-256\" (the environment variable of \
             --sasl-mechanisms): needs --sasl-users",
        ),
        (
            "PLAIN,GSSAPI",
            true,
            "STREAMLINE_SASL_MECHANISMS = \"PLAIN,GSSAPI\"",
        ),
    ] {
        let args = if users {
            vec!["--sasl-users", good.to_str().unwrap()]
        } else {
            Vec::new()
        };
        let env = [("STREAMLINE_SASL_MECHANISMS", value)];
        assert_refused_at_start_env(&data, &args, &env, names);
    }
}

/// The wire protocol itself: an unknown mechanism lists the enabled ones; a
/// SaslHandshake v0 is followed by raw tokens (PLAIN here), after which the
/// connection is served; a wrong raw token closes it unanswered; a second
/// handshake on an authenticated connection is an illegal state; a refused
/// mechanism and a second handshake before authentication close the
/// connection after their answer.
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
    let sent = std::time::Instant::now();
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
    // A failed authentication: answered no sooner than the failed
    // authentication delay (100 ms by default) after it arrived, as Kafka
    // answers it (it was answered at once).
    let took = sent.elapsed();
    assert!(
        took >= Duration::from_millis(100),
        "answered after {took:?}"
    );
    // As Kafka's authenticator, a failed handshake closes the connection: a
    // client does not get to try mechanisms one after another.
    assert!(closed(&mut s), "a refused mechanism closes the connection");
    let mut s = connect(&broker.addr);
    assert_eq!(handshake(&mut s, 1, "PLAIN").0, 0);
    assert_eq!(
        handshake(&mut s, 1, "SCRAM-SHA-256").0,
        34,
        "a second handshake before authentication: ILLEGAL_SASL_STATE"
    );
    assert!(closed(&mut s), "a second handshake closes the connection");

    let mut s = connect(&broker.addr);
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
    // So is a SaslAuthenticate once authenticated, as Kafka answers it
    // outside its authenticator (it closed the connection).
    assert_eq!(sasl_authenticate(&mut s, b"\0alice\0alice-secret"), 34);
    assert_eq!(topic_metadata(&mut s, "after-v0", false), 0, "still served");

    let mut s = connect(&broker.addr);
    assert_eq!(handshake(&mut s, 0, "PLAIN").0, 0);
    raw(&mut s, b"\0alice\0wrong");
    assert!(closed(&mut s), "a wrong raw token closes the connection");
}

/// KIP-554 through AdminClient (confluent-kafka): SCRAM users created,
/// described, refused when malformed, deleted; the users file rewritten without
/// the password; the new user authenticates with three client implementations
/// and across a restart.
#[test]
fn admin_client_manages_scram_users_in_the_users_file() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("users.json");
    std::fs::write(&path, r#"{"admin": "admin-secret"}"#).unwrap();
    let mut broker = Broker::start(
        &tmp.path().join("data"),
        &["--sasl-users", path.to_str().unwrap()],
    );
    let admin = |addr: &str, ops: &[&str]| {
        let mut args = vec!["scram", addr, "admin", "admin-secret"];
        args.extend(ops);
        let out = python_client("kafka_client.py", &args);
        tagged(&out, "SCRAM")
            .into_iter()
            .map(|r| r.join(" "))
            .collect::<Vec<_>>()
    };
    assert_eq!(
        admin(
            &broker.addr,
            &[
                "upsert=erin:SCRAM-SHA-512:8192:pw=1",
                "upsert=erin:SCRAM-SHA-256:4096:pw=1",
                "describe=erin,nobody",
                "upsert=mallory:SCRAM-SHA-256:100:x",
                "delete=admin:SCRAM-SHA-256",
                "delete=admin:SCRAM-SHA-256",
                "describe",
            ]
        ),
        [
            "0 erin ok",
            "1 erin ok",
            "2 erin ok SCRAM-SHA-512:8192 SCRAM-SHA-256:4096",
            "2 nobody error RESOURCE_NOT_FOUND",
            "3 mallory error UNACCEPTABLE_CREDENTIAL",
            "4 admin ok",
            "5 admin error RESOURCE_NOT_FOUND",
            "6 admin ok SCRAM-SHA-512:4096",
            "6 erin ok SCRAM-SHA-512:8192 SCRAM-SHA-256:4096",
        ]
    );
    let file = std::fs::read_to_string(&path).unwrap();
    assert!(
        !file.contains("pw=1") && !file.contains("admin-secret"),
        "{file}"
    );
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "{mode:o}");
    }
    // admin lost SCRAM-SHA-256 (the python client's mechanism) but keeps SHA-512.
    let mut expected = Vec::new();
    let authenticated = |addr: &str, expected: &mut Vec<String>| {
        let args = kcat_sasl(
            addr,
            "SCRAM-SHA-512",
            "erin",
            "pw=1",
            &["-P", "-t", "users"],
        );
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        kcat(&args, b"kcat-SCRAM-SHA-512\n");
        expected.push("kcat-SCRAM-SHA-512".to_string());
        let js = kafkajs_client(&[
            "sasl",
            addr,
            "users",
            "erin",
            "pw=1",
            "scram-sha-256",
            "plain",
        ]);
        assert_authenticated(expected, &[("kafkajs", &js, &["scram-sha-256", "plain"])]);
    };
    authenticated(&broker.addr, &mut expected);
    assert!(broker.sigterm().success(), "{}", broker.log_text());
    let broker = broker.restart();
    authenticated(&broker.addr, &mut expected);
    assert_stored(
        &broker.addr,
        "users",
        "SCRAM-SHA-512",
        "admin",
        "admin-secret",
        expected,
    );
    assert_wrong_password_refused(&broker.addr, "users", "erin", "pw=2");
}

/// Without `--sasl-users` the SCRAM admin requests answer SECURITY_DISABLED;
/// with it, two changes of one credential in a request and an unknown mechanism
/// are refused for that user only.
#[test]
fn scram_admin_requests_on_the_wire() {
    use kafka_protocol::{
        messages::{
            alter_user_scram_credentials_request::{
                ScramCredentialDeletion, ScramCredentialUpsertion,
            },
            describe_user_scram_credentials_request::UserName,
            AlterUserScramCredentialsRequest, AlterUserScramCredentialsResponse, ApiKey,
            DescribeUserScramCredentialsRequest, DescribeUserScramCredentialsResponse,
        },
        protocol::StrBytes,
    };
    use wire::{connect, request_frame, response};
    let name = |s: &'static str| StrBytes::from_static_str(s);
    let upsert = |user: &'static str, mechanism: i8| {
        ScramCredentialUpsertion::default()
            .with_name(name(user))
            .with_mechanism(mechanism)
            .with_iterations(4096)
            .with_salt(bytes::Bytes::from_static(b"salt"))
            .with_salted_password(bytes::Bytes::from_static(&[7u8; 32]))
    };
    let alter = |s: &mut TcpStream, req: &AlterUserScramCredentialsRequest| {
        s.write_all(&request_frame(ApiKey::AlterUserScramCredentials, 0, 1, req))
            .unwrap();
        let (_, r): (i32, AlterUserScramCredentialsResponse) =
            response(s, ApiKey::AlterUserScramCredentials, 0);
        r.results
            .iter()
            .map(|r| (r.user.to_string(), r.error_code))
            .collect::<Vec<_>>()
    };
    let describe = |s: &mut TcpStream, users: Option<Vec<&'static str>>| {
        let users = users.map(|u| {
            u.into_iter()
                .map(|n| UserName::default().with_name(name(n)))
                .collect()
        });
        let req = DescribeUserScramCredentialsRequest::default().with_users(users);
        s.write_all(&request_frame(
            ApiKey::DescribeUserScramCredentials,
            0,
            1,
            &req,
        ))
        .unwrap();
        let (_, r): (i32, DescribeUserScramCredentialsResponse) =
            response(s, ApiKey::DescribeUserScramCredentials, 0);
        r
    };

    let tmp = tempfile::tempdir().unwrap();
    let plain = Broker::start(&tmp.path().join("plain"), &[]);
    let mut s = connect(&plain.addr);
    assert_eq!(describe(&mut s, None).error_code, 54, "SECURITY_DISABLED");
    let req = AlterUserScramCredentialsRequest::default().with_upsertions(vec![upsert("u", 1)]);
    assert_eq!(alter(&mut s, &req), [("u".to_string(), 54)]);

    // On an authenticated connection (PLAIN through the v1 handshake).
    let login = |addr: &str| {
        use kafka_protocol::messages::{
            SaslAuthenticateRequest, SaslAuthenticateResponse, SaslHandshakeRequest,
            SaslHandshakeResponse,
        };
        let mut s = connect(addr);
        let hs = SaslHandshakeRequest::default().with_mechanism(name("PLAIN"));
        s.write_all(&request_frame(ApiKey::SaslHandshake, 1, 1, &hs))
            .unwrap();
        let _: (i32, SaslHandshakeResponse) = response(&mut s, ApiKey::SaslHandshake, 1);
        let auth = SaslAuthenticateRequest::default()
            .with_auth_bytes(bytes::Bytes::from_static(b"\0alice\0alice-secret"));
        s.write_all(&request_frame(ApiKey::SaslAuthenticate, 2, 2, &auth))
            .unwrap();
        let (_, r): (i32, SaslAuthenticateResponse) = response(&mut s, ApiKey::SaslAuthenticate, 2);
        assert_eq!(r.error_code, 0);
        s
    };
    // With PLAIN alone no user has a SCRAM credential: describing every
    // user lists none, as Kafka lists only users with one (each was answered
    // RESOURCE_NOT_FOUND).
    let plain_only = sasl_broker_with(
        &tmp.path().join("plain-only"),
        &["--sasl-mechanisms", "PLAIN"],
    );
    let mut s = login(&plain_only.addr);
    let r = describe(&mut s, None);
    assert_eq!(r.error_code, 0);
    assert!(r.results.is_empty(), "{:?}", r.results);
    drop(plain_only);

    // With SASL's default mechanisms.
    let broker = sasl_broker(tmp.path());
    let mut s = login(&broker.addr);
    let req = AlterUserScramCredentialsRequest::default()
        .with_upsertions(vec![
            upsert("dup", 1),
            upsert("dup", 1),
            upsert("odd", 9),
            upsert("fine", 2),
        ])
        .with_deletions(vec![ScramCredentialDeletion::default()
            .with_name(name(""))
            .with_mechanism(1)]);
    assert_eq!(
        alter(&mut s, &req),
        [
            (String::new(), 93), // UNACCEPTABLE_CREDENTIAL: empty name
            ("dup".into(), 92),  // DUPLICATE_RESOURCE
            ("odd".into(), 33),  // UNSUPPORTED_SASL_MECHANISM
            ("fine".into(), 0),
        ]
    );
    let r = describe(&mut s, Some(vec!["fine", "dup", "fine"]));
    let got: Vec<(String, i16, usize)> = r
        .results
        .iter()
        .map(|r| (r.user.to_string(), r.error_code, r.credential_infos.len()))
        .collect();
    assert_eq!(got, [("fine".into(), 92, 0), ("dup".into(), 91, 0)]);
    let r = describe(&mut s, Some(vec!["fine"]));
    let infos: Vec<(i8, i32)> = r.results[0]
        .credential_infos
        .iter()
        .map(|c| (c.mechanism, c.iterations))
        .collect();
    assert_eq!(infos, [(2, 4096)], "fine has its SCRAM-SHA-512 credential");
    // Before authentication the request is not served: the connection closes.
    assert!(describe_unauthenticated_closes(&broker.addr));
}

fn describe_unauthenticated_closes(addr: &str) -> bool {
    use kafka_protocol::messages::{ApiKey, DescribeUserScramCredentialsRequest};
    let mut s = wire::connect(addr);
    let req = DescribeUserScramCredentialsRequest::default();
    s.write_all(&wire::request_frame(
        ApiKey::DescribeUserScramCredentials,
        0,
        1,
        &req,
    ))
    .unwrap();
    wire::closed(&mut s)
}

/// One PLAIN login on a new connection (SaslHandshake v1, SaslAuthenticate
/// v2): the error code, how long the SaslAuthenticate took to be answered,
/// and whether the connection then closed.
fn plain_login(addr: &str, user: &str, password: &str) -> (i16, Duration, bool) {
    use kafka_protocol::{
        messages::{
            ApiKey, SaslAuthenticateRequest, SaslAuthenticateResponse, SaslHandshakeRequest,
            SaslHandshakeResponse,
        },
        protocol::StrBytes,
    };
    let mut s = wire::connect(addr);
    let hs = SaslHandshakeRequest::default().with_mechanism(StrBytes::from_static_str("PLAIN"));
    s.write_all(&wire::request_frame(ApiKey::SaslHandshake, 1, 1, &hs))
        .unwrap();
    let (_, r): (i32, SaslHandshakeResponse) = wire::response(&mut s, ApiKey::SaslHandshake, 1);
    assert_eq!(r.error_code, 0);
    let auth = SaslAuthenticateRequest::default()
        .with_auth_bytes(bytes::Bytes::from(format!("\0{user}\0{password}")));
    let frame = wire::request_frame(ApiKey::SaslAuthenticate, 2, 2, &auth);
    let sent = std::time::Instant::now();
    s.write_all(&frame).unwrap();
    let (_, r): (i32, SaslAuthenticateResponse) =
        wire::response(&mut s, ApiKey::SaslAuthenticate, 2);
    let took = sent.elapsed();
    let closed = r.error_code != 0 && wire::closed(&mut s);
    (r.error_code, took, closed)
}

/// A users file holding carol, by SCRAM-SHA-512 credentials only (16,384
/// iterations, password `carol-secret`), as `streamline-scram` writes it.
fn carol() -> serde_json::Value {
    let made = run(
        Command::new(env!("CARGO_BIN_EXE_streamline-scram")).args([
            "carol",
            "--iterations",
            "16384",
            "--mechanism",
            "SCRAM-SHA-512",
        ]),
        b"carol-secret\n",
        Duration::from_secs(30),
    );
    assert!(made.status.success(), "{made:?}");
    serde_json::from_slice(&made.stdout).unwrap()
}

/// Wrong PLAIN passwords for a user known by salted credentials only (16,384
/// iterations), from many connections at once: the broker checks them by
/// deriving the credential one at a time, never on more threads, and answers
/// each failure, an unknown user's too, no sooner than 100 ms after it arrived
/// (`connection.failed.authentication.delay.ms`). A user who logged in with
/// PLAIN logs in again without a derivation.
#[test]
fn failed_plain_logins_derive_one_at_a_time_and_are_answered_late() {
    let tmp = tempfile::tempdir().unwrap();
    let mut users = carol();
    users["alice"] = "alice-secret".into();
    let path = tmp.path().join("users.json");
    std::fs::write(&path, users.to_string()).unwrap();
    let broker = Broker::start(
        &tmp.path().join("data"),
        &[
            "--sasl-users",
            path.to_str().unwrap(),
            "--metrics-listen",
            "127.0.0.1:0",
        ],
    );
    let delay = Duration::from_millis(100);
    let attempts: Vec<_> = (0..16)
        .map(|i| {
            let addr = broker.addr.clone();
            std::thread::spawn(move || plain_login(&addr, "carol", &format!("wrong-{i}")))
        })
        .collect();
    for a in attempts {
        let (code, took, closed) = a.join().unwrap();
        assert_eq!(code, 58, "SASL_AUTHENTICATION_FAILED");
        assert!(took >= delay, "a wrong password answered after {took:?}");
        assert!(closed, "the connection closes after the failure");
    }
    for (user, password) in [("nobody", "x"), ("alice", "wrong")] {
        let (code, took, closed) = plain_login(&broker.addr, user, password);
        assert_eq!((code, closed), (58, true), "{user}");
        assert!(took >= delay, "{user}: answered after {took:?}");
    }
    let m = scrape(&broker);
    assert_eq!(
        metric(&m, "streamline_sasl_plain_derivations_max_concurrent{}"),
        1.0,
        "derivations run one at a time"
    );
    assert_eq!(
        metric(&m, "streamline_sasl_plain_derivations_total{}"),
        16.0
    );
    // The password: derived once, then remembered.
    for _ in 0..2 {
        let (code, _, _) = plain_login(&broker.addr, "carol", "carol-secret");
        assert_eq!(code, 0);
    }
    let m = scrape(&broker);
    assert_eq!(
        metric(&m, "streamline_sasl_plain_derivations_total{}"),
        17.0
    );
    assert_eq!(
        metric(
            &m,
            "streamline_sasl_authentications_total{result=\"failure\"}"
        ),
        18.0
    );
}

/// Sends ApiVersions `version` (raw: v0 or one not served, which the broker
/// answers with a v0 body) and returns its error code, or `None` when the
/// connection closed instead.
fn api_versions(s: &mut TcpStream, version: u8) -> Option<i16> {
    s.write_all(&[0, 0, 0, 10, 0, 18, 0, version, 0, 0, 0, 7, 0, 0])
        .ok()?;
    let body = wire::read_frame(s)?;
    assert_eq!(&body[..4], &[0, 0, 0, 7], "correlation id");
    Some(i16::from_be_bytes([body[4], body[5]]))
}

/// Sends ApiVersions v3 naming its client software `name` and `version`
/// (raw, short names only) and returns its error code and how many APIs it
/// lists, or `None` when the connection closed instead.
fn api_versions_v3(s: &mut TcpStream, name: &str, version: &str) -> Option<(i16, usize)> {
    let mut f = vec![0, 0, 0, 0, 0, 18, 0, 3, 0, 0, 0, 7, 0, 0, 0];
    for field in [name, version] {
        f.push(u8::try_from(field.len() + 1).unwrap());
        f.extend(field.as_bytes());
    }
    f.push(0);
    let len = u32::try_from(f.len() - 4).unwrap().to_be_bytes();
    f[..4].copy_from_slice(&len);
    s.write_all(&f).ok()?;
    let body = wire::read_frame(s)?;
    assert_eq!(&body[..4], &[0, 0, 0, 7], "correlation id");
    // The error code, then the compact array of APIs (its length plus one,
    // one byte while under 127).
    Some((
        i16::from_be_bytes([body[4], body[5]]),
        usize::from(body[6]) - 1,
    ))
}

/// SaslHandshake v1 for `mechanism`: its error code.
fn sasl_handshake(s: &mut TcpStream, mechanism: &'static str) -> i16 {
    use kafka_protocol::{
        messages::{ApiKey, SaslHandshakeRequest, SaslHandshakeResponse},
        protocol::StrBytes,
    };
    let hs = SaslHandshakeRequest::default().with_mechanism(StrBytes::from_static_str(mechanism));
    s.write_all(&wire::request_frame(ApiKey::SaslHandshake, 1, 1, &hs))
        .unwrap();
    let (_, r): (i32, SaslHandshakeResponse) = wire::response(s, ApiKey::SaslHandshake, 1);
    r.error_code
}

/// SaslAuthenticate v2 with `token`: its error code.
fn sasl_authenticate(s: &mut TcpStream, token: &'static [u8]) -> i16 {
    use kafka_protocol::messages::{ApiKey, SaslAuthenticateRequest, SaslAuthenticateResponse};
    let auth = SaslAuthenticateRequest::default().with_auth_bytes(bytes::Bytes::from_static(token));
    s.write_all(&wire::request_frame(ApiKey::SaslAuthenticate, 2, 2, &auth))
        .unwrap();
    let (_, r): (i32, SaslAuthenticateResponse) = wire::response(s, ApiKey::SaslAuthenticate, 2);
    r.error_code
}

/// As Kafka's SaslServerAuthenticator: before authentication ApiVersions is
/// answered once, before the SaslHandshake (one of a version not served does
/// not count); another closes the connection. Once authenticated, a client
/// may ask as often as it likes.
#[test]
fn api_versions_is_answered_once_and_only_before_the_handshake() {
    let tmp = tempfile::tempdir().unwrap();
    let broker = sasl_broker(tmp.path());

    let mut s = wire::connect(&broker.addr);
    assert_eq!(api_versions(&mut s, 0), Some(0));
    assert_eq!(api_versions(&mut s, 0), None, "a second one closes");

    let mut s = wire::connect(&broker.addr);
    assert_eq!(sasl_handshake(&mut s, "PLAIN"), 0);
    assert_eq!(api_versions(&mut s, 0), None, "after the handshake");

    let mut s = wire::connect(&broker.addr);
    assert_eq!(sasl_handshake(&mut s, "SCRAM-SHA-256"), 0);
    assert_eq!(
        api_versions(&mut s, 99),
        None,
        "not served, after the handshake"
    );

    // Client software named as Kafka refuses (v3): INVALID_REQUEST, listing
    // no API, and the client may ask again, as Kafka's authenticator allows.
    let mut s = wire::connect(&broker.addr);
    for (name, version) in [
        ("", "1.0"),
        ("client", ""),
        ("-client", "1.0"),
        ("client", "1.0 beta"),
    ] {
        assert_eq!(
            api_versions_v3(&mut s, name, version),
            Some((42, 0)),
            "{name:?} {version:?}"
        );
    }
    let (code, listed) = api_versions_v3(&mut s, "librdkafka", "2.3.0").unwrap();
    assert_eq!(code, 0);
    assert!(listed > 20, "{listed} APIs listed");
    assert_eq!(sasl_handshake(&mut s, "PLAIN"), 0);
    assert_eq!(sasl_authenticate(&mut s, b"\0alice\0alice-secret"), 0);

    let mut s = wire::connect(&broker.addr);
    assert_eq!(api_versions(&mut s, 99), Some(35), "UNSUPPORTED_VERSION");
    assert_eq!(api_versions(&mut s, 99), Some(35), "asked again");
    assert_eq!(api_versions(&mut s, 0), Some(0));
    assert_eq!(sasl_handshake(&mut s, "PLAIN"), 0);
    assert_eq!(sasl_authenticate(&mut s, b"\0alice\0alice-secret"), 0);
    for _ in 0..3 {
        assert_eq!(api_versions(&mut s, 0), Some(0), "authenticated");
    }
    assert!(broker
        .log_text()
        .contains("ApiVersions again, or after SaslHandshake, before SASL authentication"));
}

/// With `--sasl-users` a connection must authenticate within
/// `--sasl-authentication-timeout-ms` of its accept: one that sends nothing,
/// one that stops halfway through SCRAM and one that keeps sending ApiVersions
/// of a version not served are closed then; an authenticated one is not.
/// Their log line goes through a limit: clients that never log in could
/// write one each at will.
#[test]
fn a_connection_that_does_not_authenticate_in_time_is_closed() {
    let tmp = tempfile::tempdir().unwrap();
    let broker = sasl_broker_with(tmp.path(), &["--sasl-authentication-timeout-ms", "1500"]);
    let start = std::time::Instant::now();
    let mut authenticated = wire::connect(&broker.addr);
    assert_eq!(sasl_handshake(&mut authenticated, "PLAIN"), 0);
    assert_eq!(
        sasl_authenticate(&mut authenticated, b"\0alice\0alice-secret"),
        0
    );
    let mut silent = wire::connect(&broker.addr);
    let mut many: Vec<TcpStream> = (0..30).map(|_| wire::connect(&broker.addr)).collect();
    let mut halfway = wire::connect(&broker.addr);
    assert_eq!(sasl_handshake(&mut halfway, "SCRAM-SHA-256"), 0);
    use kafka_protocol::messages::{ApiKey, SaslAuthenticateRequest, SaslAuthenticateResponse};
    let first = SaslAuthenticateRequest::default()
        .with_auth_bytes(bytes::Bytes::from_static(b"n,,n=alice,r=abcdefgh"));
    halfway
        .write_all(&wire::request_frame(ApiKey::SaslAuthenticate, 2, 2, &first))
        .unwrap();
    let (_, r): (i32, SaslAuthenticateResponse) =
        wire::response(&mut halfway, ApiKey::SaslAuthenticate, 2);
    assert_eq!(r.error_code, 0, "server-first message");
    let mut busy = wire::connect(&broker.addr);
    let busy_until = std::thread::spawn(move || {
        while api_versions(&mut busy, 99) == Some(35) {
            std::thread::sleep(Duration::from_millis(100));
        }
        std::time::Instant::now()
    });
    for (name, s) in [("silent", &mut silent), ("halfway", &mut halfway)] {
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        assert!(
            wire::closed(s),
            "{name}: still open after {:?}",
            start.elapsed()
        );
        assert!(
            start.elapsed() >= Duration::from_millis(1400),
            "{name}: closed after {:?}",
            start.elapsed()
        );
    }
    for s in &mut many {
        assert!(wire::closed(s), "still open after {:?}", start.elapsed());
    }
    let busy_closed = busy_until.join().unwrap().duration_since(start);
    assert!(
        (Duration::from_millis(1400)..Duration::from_secs(10)).contains(&busy_closed),
        "busy: closed after {busy_closed:?}"
    );
    assert_eq!(
        wire::topic_metadata(&mut authenticated, "in-time", true),
        0,
        "an authenticated connection outlives the deadline"
    );
    let lines = broker
        .log_text()
        .matches("closing a connection that did not authenticate in time")
        .count();
    assert!(
        (1..=20).contains(&lines),
        "{lines} lines for 33 connections closed within 10 s"
    );
}

/// A client that never authenticates and never reads, sending requests the
/// broker answers before authentication (ApiVersions of a version it does
/// not serve) as fast as it can, is closed at the deadline too. Before, once
/// its unread answers filled the socket and the connection's answer queue,
/// the reader waited for room without watching the deadline, and the
/// connection stayed for `--connections-max-idle-ms` (forever with 0).
#[test]
fn a_client_that_does_not_read_is_closed_at_the_authentication_deadline() {
    let tmp = tempfile::tempdir().unwrap();
    let broker = sasl_broker_with(
        tmp.path(),
        &[
            "--sasl-authentication-timeout-ms",
            "1500",
            "--connections-max-idle-ms",
            "0",
        ],
    );
    let start = std::time::Instant::now();
    let mut c = wire::connect(&broker.addr);
    c.set_write_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    // ApiVersions v99, no client id: answered UNSUPPORTED_VERSION every time.
    let frames: Vec<u8> = (0..1000u32)
        .flat_map(|i| {
            let mut f = vec![0, 0, 0, 10, 0, 18, 0, 99];
            f.extend_from_slice(&i.to_be_bytes());
            f.extend_from_slice(&[0xff, 0xff]);
            f
        })
        .collect();
    let closed = loop {
        match c.write(&frames) {
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => break start.elapsed(),
        }
        assert!(
            start.elapsed() < Duration::from_secs(15),
            "still open after {:?}",
            start.elapsed()
        );
    };
    assert!(
        closed >= Duration::from_millis(1400),
        "closed after {closed:?}"
    );
    assert!(broker
        .log_text()
        .contains("closing a connection that did not authenticate in time"));
}

/// PLAIN logins queued for their password derivation are bound by
/// `--sasl-authentication-timeout-ms` too: one whose deadline passes while it
/// waits its turn is closed unanswered and never derived, so a flood of logins
/// holds neither connections nor the derivation queue past the deadline.
/// Before, a queued login waited for its derivation however long the queue was.
#[test]
fn plain_logins_queued_past_the_authentication_deadline_are_closed_underived() {
    use kafka_protocol::messages::{ApiKey, SaslAuthenticateRequest};
    const LOGINS: usize = 64;
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("users.json");
    std::fs::write(&path, carol().to_string()).unwrap();
    let broker = Broker::start(
        &tmp.path().join("data"),
        &[
            "--sasl-users",
            path.to_str().unwrap(),
            "--sasl-authentication-timeout-ms",
            "300",
            "--metrics-listen",
            "127.0.0.1:0",
        ],
    );
    let logins: Vec<_> = (0..LOGINS)
        .map(|i| {
            let addr = broker.addr.clone();
            std::thread::spawn(move || {
                let start = std::time::Instant::now();
                let mut s = wire::connect(&addr);
                assert_eq!(sasl_handshake(&mut s, "PLAIN"), 0);
                let auth = SaslAuthenticateRequest::default()
                    .with_auth_bytes(bytes::Bytes::from(format!("\0carol\0wrong-{i}")));
                s.write_all(&wire::request_frame(ApiKey::SaslAuthenticate, 2, 2, &auth))
                    .unwrap();
                s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
                let answered = wire::read_frame(&mut s).is_some();
                (answered, start.elapsed())
            })
        })
        .collect();
    let mut unanswered = 0;
    for l in logins {
        let (answered, took) = l.join().unwrap();
        unanswered += usize::from(!answered);
        assert!(
            took < Duration::from_secs(5),
            "a login ended after {took:?}"
        );
    }
    let m = scrape(&broker);
    let derived = metric(&m, "streamline_sasl_plain_derivations_total{}");
    assert!(
        unanswered > 0 && derived < LOGINS as f64,
        "{unanswered} of {LOGINS} logins closed unanswered, {derived} derivations"
    );
}
