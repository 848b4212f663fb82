//! The Kafka listener over TLS (`--tls-cert`, `--tls-key`, `--tls-client-ca`),
//! with certificates made by the `openssl` command: librdkafka (kcat) produces
//! and consumes over it, a plaintext client is refused without disturbing the
//! others, client certificates are required when a client CA is given, and bad
//! TLS material stops the start before anything is created on disk.

mod broker_support;

use std::{
    io::Write,
    net::TcpStream,
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use broker_support::{
    assert_refused_at_start, kafkajs_client_env, kcat, metric, require_tool, run, scrape, tagged,
    Broker,
};

/// A CA, a server certificate for 127.0.0.1 and a client certificate, all
/// signed by the CA (P-256 keys), in `dir`.
struct Certs {
    ca: PathBuf,
    server_cert: PathBuf,
    server_key: PathBuf,
    client_cert: PathBuf,
    client_key: PathBuf,
}

fn openssl(dir: &Path, args: &[&str]) {
    require_tool("openssl");
    let out = run(
        Command::new("openssl").current_dir(dir).args(args),
        b"",
        Duration::from_secs(60),
    );
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn make_certs(dir: &Path) -> Certs {
    let key = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    let req = |name: &str, cn: &str| {
        let (k, o) = (format!("{name}.key"), format!("{name}.csr"));
        let subj = format!("/CN={cn}");
        let mut args = vec!["req"];
        args.extend(key);
        args.extend(["-keyout", &k, "-out", &o, "-subj", &subj]);
        openssl(dir, &args);
    };
    let sign = |name: &str, ext: &str| {
        std::fs::write(dir.join(format!("{name}.ext")), ext).unwrap();
        let (csr, crt, extfile) = (
            format!("{name}.csr"),
            format!("{name}.crt"),
            format!("{name}.ext"),
        );
        openssl(
            dir,
            &[
                "x509",
                "-req",
                "-in",
                &csr,
                "-CA",
                "ca.crt",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-out",
                &crt,
                "-days",
                "2",
                "-extfile",
                &extfile,
            ],
        );
    };
    let mut ca = vec!["req", "-x509"];
    ca.extend(key);
    ca.extend([
        "-keyout",
        "ca.key",
        "-out",
        "ca.crt",
        "-days",
        "2",
        "-subj",
        "/CN=streamline-test-ca",
    ]);
    openssl(dir, &ca);
    req("server", "localhost");
    sign(
        "server",
        "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\nbasicConstraints=CA:FALSE\n",
    );
    req("client", "streamline-test-client");
    sign(
        "client",
        "extendedKeyUsage=clientAuth\nbasicConstraints=CA:FALSE\n",
    );
    Certs {
        ca: dir.join("ca.crt"),
        server_cert: dir.join("server.crt"),
        server_key: dir.join("server.key"),
        client_cert: dir.join("client.crt"),
        client_key: dir.join("client.key"),
    }
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// kcat's arguments for a TLS connection to `addr`, with a client certificate
/// when `client` is set, followed by `rest`.
fn ssl_args(addr: &str, certs: &Certs, client: bool, rest: &[&str]) -> Vec<String> {
    let mut a: Vec<String> = vec!["-b".into(), addr.into()];
    let mut set = vec![
        "security.protocol=ssl".to_string(),
        format!("ssl.ca.location={}", s(&certs.ca)),
    ];
    if client {
        set.push(format!(
            "ssl.certificate.location={}",
            s(&certs.client_cert)
        ));
        set.push(format!("ssl.key.location={}", s(&certs.client_key)));
    }
    for kv in set {
        a.extend(["-X".to_string(), kv]);
    }
    a.extend(rest.iter().map(|r| (*r).to_string()));
    a
}

fn kcat_ssl(addr: &str, certs: &Certs, client: bool, rest: &[&str], stdin: &[u8]) -> Vec<u8> {
    let args = ssl_args(addr, certs, client, rest);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    kcat(&args, stdin).stdout
}

fn produce(addr: &str, certs: &Certs, client: bool, values: &[&str]) {
    let rest = ["-P", "-t", "secure", "-X", "acks=all"];
    kcat_ssl(
        addr,
        certs,
        client,
        &rest,
        (values.join("\n") + "\n").as_bytes(),
    );
}

fn consume(addr: &str, certs: &Certs, client: bool) -> Vec<String> {
    let rest = ["-C", "-t", "secure", "-o", "beginning", "-e", "-q"];
    String::from_utf8(kcat_ssl(addr, certs, client, &rest, b""))
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect()
}

/// A broker in `dir` serving TLS with the server certificate, and `extra` flags.
fn tls_broker(dir: &Path, certs: &Certs, extra: &[&str]) -> Broker {
    let mut args = vec![
        "--tls-cert",
        s(&certs.server_cert),
        "--tls-key",
        s(&certs.server_key),
    ];
    args.extend(extra);
    Broker::start(&dir.join("data"), &args)
}

#[test]
fn tls_listener_serves_librdkafka_and_refuses_plaintext() {
    let tmp = tempfile::tempdir().unwrap();
    let certs = make_certs(tmp.path());
    let broker = tls_broker(tmp.path(), &certs, &["--metrics-listen", "127.0.0.1:0"]);
    produce(&broker.addr, &certs, false, &["one", "two", "three"]);
    assert_eq!(
        consume(&broker.addr, &certs, false),
        ["one", "two", "three"]
    );

    // A plaintext ApiVersions request gets no Kafka answer: at most a TLS alert
    // record (content type 21), then the connection closes, at once, not when
    // the 10 s handshake timeout ends it.
    let mut plain = TcpStream::connect(&broker.addr).unwrap();
    plain
        .write_all(&[0, 0, 0, 10, 0, 18, 0, 0, 0, 0, 0, 1, 0, 0])
        .unwrap();
    plain
        .set_read_timeout(Some(Duration::from_secs(3)))
        .unwrap();
    let answer = broker_support::wire::sent_before_close(&mut plain)
        .expect("the plaintext connection was still open 3 s after its request");
    assert!(
        answer.is_empty() || answer[0] == 21,
        "plaintext got {answer:?}"
    );
    // The TLS clients are undisturbed.
    produce(&broker.addr, &certs, false, &["four"]);
    assert_eq!(
        consume(&broker.addr, &certs, false),
        ["one", "two", "three", "four"]
    );
    assert!(broker.log_text().contains("TLS handshake failed"));
    let m = scrape(&broker);
    assert_eq!(
        metric(&m, "streamline_tls_handshake_failures_total{}"),
        1.0,
        "the plaintext connection, and only it"
    );
}

/// A TLS connection to `addr` trusting the test CA, its handshake done.
fn tls_client(
    addr: &str,
    certs: &Certs,
) -> tokio_rustls::rustls::StreamOwned<tokio_rustls::rustls::ClientConnection, TcpStream> {
    use rustls_pki_types::{pem::PemObject, CertificateDer, ServerName};
    use tokio_rustls::rustls;
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(&certs.ca).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    let config = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let name = ServerName::try_from("127.0.0.1").unwrap();
    let conn = rustls::ClientConnection::new(std::sync::Arc::new(config), name).unwrap();
    let mut tls = rustls::StreamOwned::new(conn, TcpStream::connect(addr).unwrap());
    while tls.conn.is_handshaking() {
        tls.conn.complete_io(&mut tls.sock).unwrap();
    }
    tls
}

/// A TLS client that closed without close_notify (kafka-python's close
/// never sends it; nor does a client that crashes) was logged as a failed
/// connection at WARN, each time; one whose record did not decrypt after the
/// handshake was counted as a bad Kafka request. The first is now a close
/// like any other; the second is closed and logged, but not counted.
#[test]
fn a_tls_close_without_close_notify_is_a_plain_close_and_a_bad_record_no_bad_request() {
    use std::io::Read;
    let tmp = tempfile::tempdir().unwrap();
    let certs = make_certs(tmp.path());
    let broker = tls_broker(tmp.path(), &certs, &["--metrics-listen", "127.0.0.1:0"]);
    let all_closed = || {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while metric(&scrape(&broker), "streamline_connections_open{}") != 0.0 {
            assert!(
                std::time::Instant::now() < deadline,
                "connections still open"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    // An ApiVersions v0 answered, then the socket closed without close_notify.
    let mut c = tls_client(&broker.addr, &certs);
    c.write_all(&[0, 0, 0, 10, 0, 18, 0, 0, 0, 0, 0, 1, 0, 0])
        .unwrap();
    let mut len = [0u8; 4];
    c.read_exact(&mut len).unwrap();
    let mut body = vec![0u8; u32::from_be_bytes(len) as usize];
    c.read_exact(&mut body).unwrap();
    assert_eq!(&body[..6], &[0, 0, 0, 1, 0, 0], "correlation id 1, NONE");
    drop(c);
    all_closed();
    let log = broker.log_text();
    assert!(!log.contains("close_notify"), "{log}");
    assert!(!log.contains("closing connection"), "{log}");

    // A record that does not decrypt, after the handshake.
    let mut c = tls_client(&broker.addr, &certs);
    let mut record = vec![0x17, 3, 3, 0, 48];
    record.extend((0..48u8).map(|i| i.wrapping_mul(37)));
    c.sock.write_all(&record).unwrap();
    c.sock
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    broker_support::wire::sent_before_close(&mut c.sock)
        .expect("the connection was still open 5 s after its bad record");
    all_closed();
    assert!(broker.log_text().contains("closing connection"));
    let m = scrape(&broker);
    assert_eq!(
        metric(&m, "streamline_connections_closed_bad_request_total{}"),
        0.0
    );
    assert_eq!(metric(&m, "streamline_tls_errors_total{}"), 1.0);
    assert_eq!(metric(&m, "streamline_connections_accepted_total{}"), 2.0);
}

#[test]
fn client_certificates_are_required_with_a_client_ca() {
    let tmp = tempfile::tempdir().unwrap();
    let certs = make_certs(tmp.path());
    let broker = tls_broker(tmp.path(), &certs, &["--tls-client-ca", s(&certs.ca)]);
    // Without a client certificate nothing is acknowledged.
    let args = ssl_args(
        &broker.addr,
        &certs,
        false,
        &["-P", "-t", "secure", "-X", "acks=all", "-m", "5"],
    );
    let out = run(
        Command::new("kcat").args(&args),
        b"refused\n",
        Duration::from_secs(60),
    );
    assert!(
        !out.status.success(),
        "a client without a certificate was served: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(broker.log_text().contains("peer sent no certificates"));
    produce(&broker.addr, &certs, true, &["signed"]);
    assert_eq!(consume(&broker.addr, &certs, true), ["signed"]);
}

#[test]
fn bad_tls_material_stops_the_start_before_anything_is_created() {
    let tmp = tempfile::tempdir().unwrap();
    let certs = make_certs(tmp.path());
    let data = tmp.path().join("never-created");
    let missing = tmp.path().join("missing.pem");
    let cases: Vec<(Vec<&str>, String)> = vec![
        // Half a pair (the parser names the missing flag).
        (
            vec!["--tls-cert", s(&certs.server_cert)],
            "--tls-key".into(),
        ),
        (vec!["--tls-client-ca", s(&certs.ca)], "--tls-cert".into()),
        // A file that does not exist, one without a certificate, a key that is
        // not the certificate's.
        (
            vec!["--tls-cert", s(&missing), "--tls-key", s(&certs.server_key)],
            s(&missing).into(),
        ),
        (
            vec![
                "--tls-cert",
                s(&certs.server_key),
                "--tls-key",
                s(&certs.server_key),
            ],
            "no CERTIFICATE".into(),
        ),
        (
            vec![
                "--tls-cert",
                s(&certs.server_cert),
                "--tls-key",
                s(&certs.client_key),
            ],
            s(&certs.server_cert).into(),
        ),
        (
            vec![
                "--tls-cert",
                s(&certs.server_cert),
                "--tls-key",
                s(&certs.server_key),
                "--tls-client-ca",
                s(&certs.server_key),
            ],
            s(&certs.server_key).into(),
        ),
    ];
    for (args, names) in cases {
        assert_refused_at_start(&data, &args, &names);
    }
    // A FIFO at a material's path made the start wait forever, deaf to
    // SIGINT and SIGTERM, and a link to /dev/zero read until memory ran out.
    #[cfg(unix)]
    {
        let [fifo, zero] = broker_support::special_files(tmp.path(), "material");
        for special in [s(&fifo), s(&zero)] {
            for args in [
                ["--tls-cert", special, "--tls-key", s(&certs.server_key)],
                ["--tls-cert", s(&certs.server_cert), "--tls-key", special],
            ] {
                assert_refused_at_start(&data, &args, special);
            }
            let args = [
                "--tls-cert",
                s(&certs.server_cert),
                "--tls-key",
                s(&certs.server_key),
                "--tls-client-ca",
                special,
            ];
            assert_refused_at_start(&data, &args, special);
        }
    }
    // A TLS setting given by its variable alone: clap's message named the
    // missing flags as if it had been typed, never the variable.
    broker_support::assert_refused_at_start_env(
        &data,
        &[],
        &[("STREAMLINE_TLS_CLIENT_CA", s(&certs.server_cert))],
        &format!(
            "STREAMLINE_TLS_CLIENT_CA = {:?} (the environment variable of --tls-client-ca) \
             needs --tls-key and --tls-cert: set them, or unset the variable",
            s(&certs.server_cert)
        ),
    );
    // A typed flag missing what it needs keeps clap's message, a variable
    // set beside it not blamed.
    for (typed, var) in [
        (
            "--tls-client-ca",
            ("STREAMLINE_TLS_KEY", s(&certs.server_key)),
        ),
        (
            "--tls-cert",
            ("STREAMLINE_TLS_CLIENT_CA", s(&certs.server_cert)),
        ),
    ] {
        let out = run(
            Command::new(broker_support::broker_bin())
                .arg("--data-dir")
                .arg(&data)
                .args([typed, s(&certs.server_cert)])
                .env(var.0, var.1),
            b"",
            Duration::from_secs(30),
        );
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{err}");
        assert!(
            err.contains("required arguments were not provided") && !err.contains(var.0),
            "{typed} with {}: {err}",
            var.0
        );
        assert!(!data.exists());
    }
}

/// kcat's SASL_SSL settings as alice with `password` (SCRAM-SHA-256), then `rest`.
fn sasl_ssl_args(password: &str, rest: &[&str]) -> Vec<String> {
    let mut a = Vec::new();
    for kv in [
        "security.protocol=sasl_ssl".to_string(),
        "sasl.mechanisms=SCRAM-SHA-256".to_string(),
        "sasl.username=alice".to_string(),
        format!("sasl.password={password}"),
    ] {
        a.extend(["-X".to_string(), kv]);
    }
    a.extend(rest.iter().map(|r| (*r).to_string()));
    a
}

/// Whether kcat, trusting `certs`' CA, can produce `value` as alice with
/// `password` over SASL_SSL.
fn sasl_ssl_produces(addr: &str, certs: &Certs, password: &str, value: &str) -> bool {
    let sasl = sasl_ssl_args(
        password,
        &["-P", "-t", "secure", "-X", "acks=all", "-m", "10"],
    );
    let sasl: Vec<&str> = sasl.iter().map(String::as_str).collect();
    let args = ssl_args(addr, certs, false, &sasl);
    let out = run(
        Command::new("kcat").args(&args),
        format!("{value}\n").as_bytes(),
        Duration::from_secs(60),
    );
    out.status.success()
}

#[test]
fn sighup_reloads_the_certificate_and_the_sasl_users() {
    let tmp = tempfile::tempdir().unwrap();
    let (one, two) = (tmp.path().join("one"), tmp.path().join("two"));
    std::fs::create_dir_all(&one).unwrap();
    std::fs::create_dir_all(&two).unwrap();
    let (first, second) = (make_certs(&one), make_certs(&two));
    let (cert, key, users) = (
        tmp.path().join("live.crt"),
        tmp.path().join("live.key"),
        tmp.path().join("users.json"),
    );
    let install = |c: &Certs, password: &str| {
        std::fs::copy(&c.server_cert, &cert).unwrap();
        std::fs::copy(&c.server_key, &key).unwrap();
        std::fs::write(&users, format!(r#"{{"alice": "{password}"}}"#)).unwrap();
    };
    install(&first, "one");
    let broker = Broker::start(
        &tmp.path().join("data"),
        &[
            "--tls-cert",
            s(&cert),
            "--tls-key",
            s(&key),
            "--sasl-users",
            s(&users),
        ],
    );
    let wait_for_log = |what: &str, times: usize| {
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while broker.log_text().matches(what).count() < times {
            assert!(
                std::time::Instant::now() < deadline,
                "no {what:?} in the log"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    assert!(sasl_ssl_produces(&broker.addr, &first, "one", "a"));

    // New certificate (another CA) and a new password: after SIGHUP only they work.
    install(&second, "two");
    broker_support::signal(broker.pid(), "HUP");
    wait_for_log("reloaded the SASL users", 1);
    assert!(sasl_ssl_produces(&broker.addr, &second, "two", "b"));
    assert!(
        !sasl_ssl_produces(&broker.addr, &first, "two", "x"),
        "the old CA is no longer served"
    );
    assert!(
        !sasl_ssl_produces(&broker.addr, &second, "one", "x"),
        "the old password is gone"
    );

    // A reload that fails keeps what was there.
    std::fs::write(&cert, "not a certificate\n").unwrap();
    std::fs::write(&users, "[]").unwrap();
    broker_support::signal(broker.pid(), "HUP");
    wait_for_log("SASL users reload failed", 1);
    assert!(broker.log_text().contains("TLS reload failed"));
    assert!(sasl_ssl_produces(&broker.addr, &second, "two", "c"));
}

#[test]
fn sasl_over_tls_authenticates_and_encrypts() {
    let tmp = tempfile::tempdir().unwrap();
    let certs = make_certs(tmp.path());
    let users = tmp.path().join("users.json");
    std::fs::write(&users, r#"{"alice": "alice-secret"}"#).unwrap();
    let broker = tls_broker(
        tmp.path(),
        &certs,
        &["--sasl-users", users.to_str().unwrap()],
    );
    let sasl = sasl_ssl_args;
    // ssl_args sets security.protocol=ssl first; the later sasl_ssl wins.
    let produce = sasl("alice-secret", &["-P", "-t", "secure", "-X", "acks=all"]);
    let produce: Vec<&str> = produce.iter().map(String::as_str).collect();
    kcat_ssl(&broker.addr, &certs, false, &produce, b"private\n");
    let consume = sasl(
        "alice-secret",
        &["-C", "-t", "secure", "-o", "beginning", "-e", "-q"],
    );
    let consume: Vec<&str> = consume.iter().map(String::as_str).collect();
    let read = kcat_ssl(&broker.addr, &certs, false, &consume, b"");
    assert_eq!(String::from_utf8(read).unwrap(), "private\n");
    // KafkaJS (node's TLS) with each SCRAM mechanism and PLAIN over the same
    // listener; a wrong password is refused.
    let ca = [("KAFKAJS_SSL_CA", s(&certs.ca))];
    let js = kafkajs_client_env(
        &[
            "sasl",
            &broker.addr,
            "secure",
            "alice",
            "alice-secret",
            "scram-sha-256",
            "scram-sha-512",
            "plain",
        ],
        &ca,
    );
    let results: Vec<Vec<&str>> = tagged(&js, "SASL")
        .iter()
        .map(|r| r[..2].to_vec())
        .collect();
    assert_eq!(
        results,
        [
            ["scram-sha-256", "ok"],
            ["scram-sha-512", "ok"],
            ["plain", "ok"]
        ],
        "{js}"
    );
    let js = kafkajs_client_env(
        &[
            "sasl",
            &broker.addr,
            "secure",
            "alice",
            "nope",
            "scram-sha-256",
        ],
        &ca,
    );
    assert_eq!(tagged(&js, "SASL")[0][1], "error", "{js}");
    // TLS without the password gets nothing: refused for its password (a
    // refusal logged for this run, not the one above).
    let refusals = || {
        broker
            .log_text()
            .matches("SASL authentication failed")
            .count()
    };
    let before = refusals();
    let args = ssl_args(
        &broker.addr,
        &certs,
        false,
        &sasl("wrong", &["-P", "-t", "secure", "-m", "5"])
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>(),
    );
    let out = run(
        Command::new("kcat").args(&args),
        b"x\n",
        Duration::from_secs(60),
    );
    assert!(!out.status.success());
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while refusals() == before && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        refusals() > before,
        "kcat failed, but not for its password: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}
