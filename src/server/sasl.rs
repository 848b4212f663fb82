//! SASL authentication of Kafka clients (`--sasl-users`): PLAIN and SCRAM-SHA-256 /
//! SCRAM-SHA-512 (RFC 5802, RFC 7677), exchanged through SaslHandshake v1 and
//! SaslAuthenticate, as Kafka's `SASL_PLAINTEXT` and `SASL_SSL` listeners do.
//!
//! Users come from a JSON file read at start (and again on SIGHUP). A user's
//! value is either a password (`{"alice": "secret"}`), from which SCRAM
//! credentials are derived then (a random salt per user and mechanism, 4096
//! PBKDF2 iterations), or salted SCRAM credentials only, per mechanism, as
//! `streamline-scram` prints them (`{"alice": {"SCRAM-SHA-256": {"salt": ...,
//! "iterations": 4096, "stored_key": ..., "server_key": ...}}}`), so that the file
//! holds no password. Secrets are compared in constant time. Until a connection has authenticated, it may send only ApiVersions
//! (once, before the handshake), SaslHandshake and SaslAuthenticate; anything
//! else, and a failed authentication, closes it, and so does the server once
//! `--sasl-authentication-timeout-ms` has passed.
//!
//! A PLAIN login of a user given by salted credentials only is checked by a
//! PBKDF2 run ([`Step::Derive`]), which the caller bounds; a password a run
//! accepted is remembered (an HMAC under a random key) so that the user's next
//! logins need none.

use std::{collections::HashMap, num::NonZeroU32, path::Path};

use base64::{engine::general_purpose::STANDARD as B64, Engine as _};
use ring::{digest, hmac, pbkdf2, rand::SecureRandom};

use crate::error::{Error, Result};

/// PBKDF2 iterations of the derived SCRAM credentials (Kafka's minimum).
pub const ITERATIONS: u32 = 4096;

/// The iterations Kafka accepts in a SCRAM credential.
pub const ITERATIONS_RANGE: std::ops::RangeInclusive<u32> = 4096..=16384;

/// The most the users file may hold (a FIFO or a device at its path is
/// refused too: its read would wait, or never end).
const MAX_USERS_BYTES: u64 = 64 << 20;

/// A SASL mechanism the broker can offer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Mechanism {
    /// RFC 4616: the password itself, in the clear (use it over TLS).
    Plain,
    /// RFC 7677.
    ScramSha256,
    /// RFC 5802 with SHA-512, as Kafka names it.
    ScramSha512,
}

impl Mechanism {
    /// Every mechanism, in the order the broker lists them.
    pub const ALL: [Mechanism; 3] = [
        Mechanism::ScramSha512,
        Mechanism::ScramSha256,
        Mechanism::Plain,
    ];

    /// The name clients ask for.
    pub fn name(self) -> &'static str {
        match self {
            Mechanism::Plain => "PLAIN",
            Mechanism::ScramSha256 => "SCRAM-SHA-256",
            Mechanism::ScramSha512 => "SCRAM-SHA-512",
        }
    }

    /// The mechanism called `name` (case-sensitive, as in Kafka).
    pub fn parse(name: &str) -> Option<Mechanism> {
        Mechanism::ALL.into_iter().find(|m| m.name() == name)
    }

    fn algorithms(
        self,
    ) -> Option<(
        pbkdf2::Algorithm,
        hmac::Algorithm,
        &'static digest::Algorithm,
    )> {
        match self {
            Mechanism::Plain => None,
            Mechanism::ScramSha256 => Some((
                pbkdf2::PBKDF2_HMAC_SHA256,
                hmac::HMAC_SHA256,
                &digest::SHA256,
            )),
            Mechanism::ScramSha512 => Some((
                pbkdf2::PBKDF2_HMAC_SHA512,
                hmac::HMAC_SHA512,
                &digest::SHA512,
            )),
        }
    }
}

/// What the server keeps of a password for one SCRAM mechanism.
#[derive(Clone)]
struct ScramCredential {
    salt: Vec<u8>,
    iterations: u32,
    stored_key: Vec<u8>,
    server_key: Vec<u8>,
}

/// The iterations only: salt and keys stay out of logs.
impl std::fmt::Debug for ScramCredential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ScramCredential")
            .field("iterations", &self.iterations)
            .finish_non_exhaustive()
    }
}

#[derive(Clone)]
struct User {
    /// `None` for a user given by salted SCRAM credentials only.
    password: Option<Vec<u8>>,
    scram: HashMap<Mechanism, ScramCredential>,
}

/// One mechanism's salted credential in the users file (base64 fields), as
/// [`salted_credential`] makes it.
#[derive(serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct SaltedCredential {
    salt: String,
    iterations: u32,
    stored_key: String,
    server_key: String,
}

/// A salted credential of `password` for SCRAM mechanism `m`: a random 16-byte
/// salt, `iterations` PBKDF2 rounds.
///
/// # Errors
/// `m` is not a SCRAM mechanism, `iterations` is outside 4096-16384, or the
/// system has no random numbers.
pub fn salted_credential(
    m: Mechanism,
    password: &[u8],
    iterations: u32,
) -> Result<SaltedCredential> {
    let invalid = |value: String, reason: &str| Error::InvalidConfig {
        field: "SCRAM credential",
        value,
        reason: reason.into(),
    };
    let Some((kdf, mac, _)) = m.algorithms() else {
        return Err(invalid(m.name().into(), "not a SCRAM mechanism"));
    };
    if !ITERATIONS_RANGE.contains(&iterations) {
        return Err(invalid(
            iterations.to_string(),
            "iterations must be 4096-16384",
        ));
    }
    let mut salt = vec![0u8; 16];
    ring::rand::SystemRandom::new()
        .fill(&mut salt)
        .map_err(|_| invalid(m.name().into(), "no random numbers for the salt"))?;
    let (stored_key, server_key) = derive(kdf, mac, m, password, &salt, iterations);
    Ok(SaltedCredential {
        salt: B64.encode(&salt),
        iterations,
        stored_key: B64.encode(stored_key),
        server_key: B64.encode(server_key),
    })
}

impl SaltedCredential {
    /// Checks and decodes the credential of `user` for mechanism `name`.
    fn decode(&self, path: &Path, user: &str, name: &str) -> Result<(Mechanism, ScramCredential)> {
        let bad = |reason: String| users_error(path, format!("user {user:?}, {name}: {reason}"));
        let m = Mechanism::parse(name)
            .filter(|m| m.algorithms().is_some())
            .ok_or_else(|| bad("not a SCRAM mechanism (SCRAM-SHA-256 or SCRAM-SHA-512)".into()))?;
        if !ITERATIONS_RANGE.contains(&self.iterations) {
            return Err(bad(format!(
                "iterations {} outside 4096-16384",
                self.iterations
            )));
        }
        let (_, _, hash) = m.algorithms().expect("filtered above");
        let field = |what: &str, v: &str, len: Option<usize>| {
            let bytes = B64
                .decode(v)
                .map_err(|e| bad(format!("{what} is not base64: {e}")))?;
            match len {
                Some(n) if bytes.len() != n => Err(bad(format!(
                    "{what} has {} bytes, {name} makes {n}",
                    bytes.len()
                ))),
                _ if bytes.is_empty() => Err(bad(format!("{what} is empty"))),
                _ => Ok(bytes),
            }
        };
        Ok((
            m,
            ScramCredential {
                salt: field("salt", &self.salt, None)?,
                iterations: self.iterations,
                stored_key: field("stored_key", &self.stored_key, Some(hash.output_len()))?,
                server_key: field("server_key", &self.server_key, Some(hash.output_len()))?,
            },
        ))
    }
}

/// The enabled mechanisms and every user's credentials.
pub struct Authenticator {
    /// The users file, rewritten by [`Authenticator::altered`].
    path: std::path::PathBuf,
    mechanisms: Vec<Mechanism>,
    users: HashMap<String, User>,
    rng: ring::rand::SystemRandom,
    /// PLAIN passwords accepted from users known by salted credentials only,
    /// each user's last one as an HMAC under [`Authenticator::plain_key`], so
    /// that a client logging in again costs no PBKDF2 run. At most one entry
    /// per user; credentials never change under it (an alteration or a reload
    /// makes a new authenticator, which starts empty).
    plain_accepted: std::sync::Mutex<HashMap<String, Vec<u8>>>,
    /// Drawn at random for each authenticator, never stored.
    plain_key: hmac::Key,
    /// SHA-256 of the users file as this authenticator read or wrote it: an
    /// alteration rewrites the file only while it still holds that, so a hand
    /// edit not yet loaded (a user added, a user removed to revoke them) is
    /// never overwritten with the users in memory.
    file_digest: Vec<u8>,
}

/// SHA-256 of a users file's bytes.
fn file_digest(bytes: &[u8]) -> Vec<u8> {
    ring::digest::digest(&ring::digest::SHA256, bytes)
        .as_ref()
        .to_vec()
}

impl std::fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authenticator")
            .field("mechanisms", &self.mechanisms)
            .field("users", &self.users.len())
            .finish_non_exhaustive()
    }
}

/// serde's message for `e` without the value it quotes: for a file of the
/// wrong form, that value is a password or a credential ("invalid type:
/// string \"<password>\", expected struct SaltedCredential"), and the message
/// goes to the log (a SIGHUP's reload) or the terminal.
fn without_values(e: &serde_json::Error) -> String {
    let message = e.to_string();
    for kind in ["invalid type", "invalid value", "invalid length"] {
        if let Some(rest) = message.strip_prefix(kind) {
            // The last: a quoted value may hold the words too.
            return match rest.rfind(", expected") {
                Some(i) => format!("{kind}{}", &rest[i..]),
                None => format!("{kind} (line {}, column {})", e.line(), e.column()),
            };
        }
    }
    message
}

fn users_error(path: &Path, reason: impl std::fmt::Display) -> Error {
    Error::io(
        "read SASL users",
        path,
        std::io::Error::other(reason.to_string()),
    )
}

/// The authenticator `cfg` describes.
///
/// # Errors
/// As [`Authenticator::load`]; an unknown mechanism name.
pub fn load(cfg: &crate::config::SaslConfig) -> Result<Authenticator> {
    let mut mechanisms = Vec::new();
    for name in &cfg.mechanisms {
        let m = Mechanism::parse(name).ok_or_else(|| Error::InvalidConfig {
            field: "--sasl-mechanisms",
            value: name.clone(),
            reason: "accepted values: PLAIN, SCRAM-SHA-256, SCRAM-SHA-512".into(),
        })?;
        if !mechanisms.contains(&m) {
            mechanisms.push(m);
        }
    }
    Authenticator::load(&cfg.users, &mechanisms)
}

/// The key of [`Authenticator::plain_accepted`].
fn plain_key(rng: &ring::rand::SystemRandom) -> Option<hmac::Key> {
    hmac::Key::generate(hmac::HMAC_SHA256, rng).ok()
}

/// `a == b` in time that depends only on the lengths.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

impl Authenticator {
    /// Reads the users file (a JSON object of user name → password or salted
    /// SCRAM credentials) and derives the SCRAM credentials of `mechanisms` for
    /// the users given by a password.
    ///
    /// # Errors
    /// An unreadable file, JSON that is not such an object, an empty name or
    /// password, a malformed credential, no user at all.
    pub fn load(path: &Path, mechanisms: &[Mechanism]) -> Result<Authenticator> {
        let text = crate::wal::files::read_regular(path, MAX_USERS_BYTES)
            .and_then(|b| {
                String::from_utf8(b)
                    .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))
            })
            .map_err(|e| Error::io("read SASL users", path, e))?;
        let parsed: HashMap<String, serde_json::Value> = serde_json::from_str(&text).map_err(|e| {
            users_error(
                path,
                format!(
                    "expected a JSON object of user name to password or salted SCRAM credentials: {}",
                    without_values(&e)
                ),
            )
        })?;
        if parsed.is_empty() {
            return Err(users_error(path, "no users"));
        }
        #[cfg(unix)]
        if let Ok(meta) = std::fs::metadata(path) {
            use std::os::unix::fs::PermissionsExt;
            if meta.permissions().mode() & 0o077 != 0 {
                tracing::warn!(path = %path.display(), "the SASL users file holds credentials and can be read by other users; chmod 600 it");
            }
        }
        let rng = ring::rand::SystemRandom::new();
        let mut users = HashMap::new();
        for (name, entry) in parsed {
            let password = match entry {
                serde_json::Value::String(p) => p,
                serde_json::Value::Object(creds) => {
                    let creds: HashMap<String, SaltedCredential> =
                        serde_json::from_value(serde_json::Value::Object(creds)).map_err(|e| {
                            users_error(
                                path,
                                format!(
                                    "user {name:?}: salted SCRAM credentials: {}",
                                    without_values(&e)
                                ),
                            )
                        })?;
                    if name.is_empty() || creds.is_empty() {
                        return Err(users_error(
                            path,
                            "user names and credentials must not be empty",
                        ));
                    }
                    let scram = creds
                        .iter()
                        .map(|(m, c)| c.decode(path, &name, m))
                        .collect::<Result<HashMap<_, _>>>()?;
                    users.insert(
                        name,
                        User {
                            password: None,
                            scram,
                        },
                    );
                    continue;
                }
                _ => {
                    return Err(users_error(
                        path,
                        format!("user {name:?}: expected a password or salted SCRAM credentials"),
                    ))
                }
            };
            if name.is_empty() || password.is_empty() {
                return Err(users_error(
                    path,
                    "user names and passwords must not be empty",
                ));
            }
            let mut scram = HashMap::new();
            for &m in mechanisms {
                let Some((kdf, mac, _)) = m.algorithms() else {
                    continue;
                };
                let mut salt = vec![0u8; 16];
                rng.fill(&mut salt)
                    .map_err(|_| users_error(path, "no random numbers for salts"))?;
                let (stored_key, server_key) =
                    derive(kdf, mac, m, password.as_bytes(), &salt, ITERATIONS);
                scram.insert(
                    m,
                    ScramCredential {
                        salt,
                        iterations: ITERATIONS,
                        stored_key,
                        server_key,
                    },
                );
            }
            users.insert(
                name,
                User {
                    password: Some(password.into_bytes()),
                    scram,
                },
            );
        }
        let plain_key =
            plain_key(&rng).ok_or_else(|| users_error(path, "no random numbers for a key"))?;
        Ok(Authenticator {
            path: path.to_path_buf(),
            mechanisms: mechanisms.to_vec(),
            users,
            rng,
            plain_accepted: std::sync::Mutex::default(),
            plain_key,
            file_digest: file_digest(text.as_bytes()),
        })
    }

    /// The names of the enabled mechanisms.
    pub fn mechanism_names(&self) -> Vec<&'static str> {
        self.mechanisms.iter().map(|m| m.name()).collect()
    }

    /// Every user name, sorted.
    pub fn user_names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.users.keys().cloned().collect();
        names.sort_unstable();
        names
    }

    /// The SCRAM mechanisms `user` has a credential for, with their iterations,
    /// in the order of [`Mechanism::ALL`]; `None` for an unknown user.
    pub fn scram_credentials(&self, user: &str) -> Option<Vec<(Mechanism, u32)>> {
        let u = self.users.get(user)?;
        Some(
            Mechanism::ALL
                .into_iter()
                .filter_map(|m| u.scram.get(&m).map(|c| (m, c.iterations)))
                .collect(),
        )
    }

    /// A copy with `changes` applied, in order, and written to the users file
    /// (a temporary file, fsynced, renamed over it, the directory fsynced), as
    /// Kafka's AlterUserScramCredentials does. A user changed here is written as
    /// salted credentials only: its password, if the file held one, is dropped.
    /// A user left without credentials is removed.
    ///
    /// The file is replaced by a rename: once it is renamed, the change is in
    /// the file, and a later failure to fsync the directory cannot take it
    /// back. That failure is returned in [`Altered::not_durable`] beside the
    /// changed authenticator, which the caller puts in force as the file now
    /// says, and reports, since a power loss may bring back the old file.
    ///
    /// # Errors
    /// A change that is refused (the caller checks them first: an unknown
    /// mechanism, iterations out of range, a deletion of nothing), or the file
    /// cannot be written; the file is then unchanged.
    pub fn altered(&self, changes: &[ScramChange]) -> Result<Altered> {
        // The path is resolved once: the file read and checked is the one
        // written. Resolved again for the write, a link retargeted meanwhile
        // (an atomic swap of the configuration) would have the new target
        // overwritten with the old file's contents plus this change. The
        // change lands in the file that was read; the swapped-in file is
        // left as it is, for a SIGHUP to load.
        let real = std::fs::canonicalize(&self.path)
            .map_err(|e| Error::io("resolve SASL users", &self.path, e))?;
        let on_disk = crate::wal::files::read_regular(&real, MAX_USERS_BYTES)
            .map_err(|e| Error::io("read SASL users", &real, e))?;
        if file_digest(&on_disk) != self.file_digest {
            return Err(Error::io(
                "alter SCRAM credentials in",
                &real,
                std::io::Error::other(
                    "the users file changed since the broker last read it, and rewriting it \
                     would undo that change; send the broker SIGHUP to load it, then alter \
                     the credentials again",
                ),
            ));
        }
        #[cfg(test)]
        if let Some(between) = BETWEEN_USERS_READ_AND_WRITE.with(|b| b.borrow_mut().take()) {
            between();
        }
        let mut users = self.users.clone();
        for c in changes {
            match c {
                ScramChange::Delete { user, mechanism } => {
                    let u = users
                        .get_mut(user)
                        .filter(|u| u.scram.contains_key(mechanism));
                    let Some(u) = u else {
                        return Err(Error::InvalidConfig {
                            field: "SCRAM credential",
                            value: format!("{user} {}", mechanism.name()),
                            reason: "no such credential".into(),
                        });
                    };
                    u.scram.remove(mechanism);
                    u.password = None;
                    if u.scram.is_empty() {
                        users.remove(user);
                    }
                }
                ScramChange::Upsert {
                    user,
                    mechanism,
                    iterations,
                    salt,
                    salted_password,
                } => {
                    let Some((_, mac, hash)) = mechanism.algorithms() else {
                        return Err(Error::InvalidConfig {
                            field: "SCRAM credential",
                            value: mechanism.name().into(),
                            reason: "not a SCRAM mechanism".into(),
                        });
                    };
                    if !ITERATIONS_RANGE.contains(iterations) || user.is_empty() || salt.is_empty()
                    {
                        return Err(Error::InvalidConfig {
                            field: "SCRAM credential",
                            value: user.clone(),
                            reason: "iterations must be 4096-16384, user and salt non-empty".into(),
                        });
                    }
                    let (stored_key, server_key) = keys(mac, hash, salted_password);
                    let u = users.entry(user.clone()).or_insert_with(|| User {
                        password: None,
                        scram: HashMap::new(),
                    });
                    u.password = None;
                    u.scram.insert(
                        *mechanism,
                        ScramCredential {
                            salt: salt.clone(),
                            iterations: *iterations,
                            stored_key,
                            server_key,
                        },
                    );
                }
            }
        }
        if users.is_empty() {
            // `load` refuses a file without users: the broker would not start again.
            return Err(Error::InvalidConfig {
                field: "SCRAM credentials",
                value: self.path.display().to_string(),
                reason: "the change would leave no user, and the broker does not start \
                         with a users file without users; add another user first"
                    .into(),
            });
        }
        let rng = ring::rand::SystemRandom::new();
        let plain_key = plain_key(&rng).ok_or_else(|| {
            let e = std::io::Error::other("no random numbers for a key");
            Error::io("write SASL users", &self.path, e)
        })?;
        let (not_durable, file_digest) = write_users(&real, &users)?;
        Ok(Altered {
            authenticator: Authenticator {
                path: self.path.clone(),
                mechanisms: self.mechanisms.clone(),
                users,
                rng,
                plain_accepted: std::sync::Mutex::default(),
                plain_key,
                file_digest,
            },
            not_durable,
        })
    }

    /// The HMAC under which [`Authenticator::plain_accepted`] keeps a password.
    fn plain_tag(&self, password: &[u8]) -> Vec<u8> {
        hmac::sign(&self.plain_key, password).as_ref().to_vec()
    }

    /// Whether `password` is the one last accepted from `user` by a derivation.
    fn accepted_before(&self, user: &str, password: &[u8]) -> bool {
        let tag = self.plain_tag(password);
        let accepted = self
            .plain_accepted
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        accepted.get(user).is_some_and(|t| same(t, &tag))
    }
}

/// What [`Authenticator::altered`] made.
#[derive(Debug)]
pub struct Altered {
    /// The users as the file now holds them.
    pub authenticator: Authenticator,
    /// Set when the file was replaced but its directory could not be fsynced
    /// afterwards: the change is in the file, but a power loss may bring back
    /// the file as it was.
    pub not_durable: Option<Error>,
}

/// One change of [`Authenticator::altered`].
#[derive(Debug, Clone)]
pub enum ScramChange {
    /// Removes `user`'s credential for `mechanism`.
    Delete {
        /// The user.
        user: String,
        /// Which credential.
        mechanism: Mechanism,
    },
    /// Sets `user`'s credential for `mechanism` from a salted password
    /// (PBKDF2 of the password with `salt` and `iterations`, as the client made it).
    Upsert {
        /// The user, created if new.
        user: String,
        /// Which credential.
        mechanism: Mechanism,
        /// PBKDF2 iterations of `salted_password`.
        iterations: u32,
        /// The salt.
        salt: Vec<u8>,
        /// SaltedPassword (RFC 5802).
        salted_password: Vec<u8>,
    },
}

/// Whether `iterations` is acceptable for a SCRAM credential.
pub fn iterations_acceptable(iterations: i32) -> bool {
    u32::try_from(iterations).is_ok_and(|i| ITERATIONS_RANGE.contains(&i))
}

/// Writes `users` to `path` atomically: passwords as strings, the others as
/// salted credentials, owner-only permissions. Returns the failure to fsync
/// the directory after the rename, when it fails (the file holds `users`
/// then), and the [`file_digest`] of what was written.
///
/// `path` is the users file resolved (`canonicalize`d) by the caller, once,
/// before it read it: a configured path that is a symbolic link
/// (configuration management often links the users file) stays one, the
/// file it resolves to being the one replaced, by a temporary file in that
/// file's directory, so later edits of it (and a SIGHUP) still reach the
/// broker.
///
/// # Errors
/// A failure before the rename: the file is unchanged.
fn write_users(path: &Path, users: &HashMap<String, User>) -> Result<(Option<Error>, Vec<u8>)> {
    let mut out = serde_json::Map::new();
    let mut names: Vec<&String> = users.keys().collect();
    names.sort_unstable();
    for name in names {
        let u = &users[name];
        let value = match &u.password {
            Some(p) => serde_json::Value::String(String::from_utf8_lossy(p).into_owned()),
            None => {
                let mut creds = serde_json::Map::new();
                for m in Mechanism::ALL {
                    if let Some(c) = u.scram.get(&m) {
                        let salted = SaltedCredential {
                            salt: B64.encode(&c.salt),
                            iterations: c.iterations,
                            stored_key: B64.encode(&c.stored_key),
                            server_key: B64.encode(&c.server_key),
                        };
                        creds.insert(
                            m.name().into(),
                            serde_json::to_value(salted).expect("plain fields"),
                        );
                    }
                }
                serde_json::Value::Object(creds)
            }
        };
        out.insert(name.clone(), value);
    }
    let mut text =
        serde_json::to_string_pretty(&serde_json::Value::Object(out)).expect("a JSON object");
    text.push('\n');
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let tmp = dir.join(format!(
        ".{}.tmp",
        path.file_name()
            .map_or("users".into(), |n| n.to_string_lossy())
    ));
    let write = || -> std::io::Result<()> {
        let mut opts = std::fs::OpenOptions::new();
        opts.write(true).create(true).truncate(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
        // Not a FIFO left at the temporary name: its open would wait.
        let mut f = crate::wal::files::open_regular_with(&tmp, &mut opts)?;
        std::io::Write::write_all(&mut f, text.as_bytes())?;
        crate::wal::journal::sync_all(&f)?;
        std::fs::rename(&tmp, path)
    };
    write().map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        Error::io("write SASL users", path, e)
    })?;
    let sync_dir = || -> std::io::Result<()> {
        #[cfg(test)]
        if FAIL_USERS_DIR_SYNC.with(std::cell::Cell::take) {
            return Err(std::io::Error::other("injected directory fsync failure"));
        }
        // Skipped where directories cannot be synced (Windows, whose
        // `File::open` of a directory fails).
        crate::wal::files::sync_dir(dir).map_err(std::io::Error::other)
    };
    let not_durable = sync_dir()
        .err()
        .map(|e| Error::io("fsync the directory of", path, e));
    Ok((not_durable, file_digest(text.as_bytes())))
}

#[cfg(test)]
thread_local! {
    /// Makes the next [`write_users`] on this thread fail its directory fsync,
    /// after the rename.
    pub(crate) static FAIL_USERS_DIR_SYNC: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
    /// Run once by the next [`Authenticator::altered`] on this thread between
    /// its read of the users file and its write.
    pub(crate) static BETWEEN_USERS_READ_AND_WRITE: std::cell::RefCell<Option<Box<dyn FnOnce()>>> =
        const { std::cell::RefCell::new(None) };
}

/// A PLAIN login of a user known by salted credentials only, whose password
/// must be checked by deriving the credential again: a PBKDF2 run of 4,096 to
/// 16,384 iterations, some 10-40 ms of a core, that any client can ask for
/// before it is authenticated. The caller bounds how many run at once, on
/// threads that may block ([`Derivation::run`]).
pub struct Derivation {
    user: String,
    password: Vec<u8>,
}

impl std::fmt::Debug for Derivation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Derivation")
            .field("user", &self.user)
            .finish_non_exhaustive()
    }
}

impl Derivation {
    /// Derives the credential and compares it: [`Step::Done`] or
    /// [`Step::Failed`]. `auth` is the authenticator whose
    /// [`Session::authenticate`] returned this; an accepted password is
    /// remembered there, so the user's next PLAIN login needs no derivation.
    pub fn run(self, auth: &Authenticator) -> Step {
        let Some(u) = auth.users.get(&self.user) else {
            return Step::Failed(BAD_CREDENTIALS.into());
        };
        // Given a password since this login arrived (a reload): no derivation.
        if let Some(p) = &u.password {
            return if same(p, &self.password) {
                Step::Done {
                    user: self.user,
                    reply: Vec::new(),
                }
            } else {
                Step::Failed(BAD_CREDENTIALS.into())
            };
        }
        // Each mechanism's credential is its own, as in Kafka: a password
        // altered through one mechanism leaves the others' as they were, and
        // the password any of them takes logs in.
        let taken = Mechanism::ALL.into_iter().any(|m| {
            u.scram.get(&m).is_some_and(|cred| {
                let (kdf, mac, _) = m.algorithms().expect("salted credentials are SCRAM");
                let (stored_key, _) =
                    derive(kdf, mac, m, &self.password, &cred.salt, cred.iterations);
                same(&stored_key, &cred.stored_key)
            })
        });
        if !taken {
            return Step::Failed(BAD_CREDENTIALS.into());
        }
        let tag = auth.plain_tag(&self.password);
        auth.plain_accepted
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(self.user.clone(), tag);
        Step::Done {
            user: self.user,
            reply: Vec::new(),
        }
    }
}

/// StoredKey and ServerKey of `password` (RFC 5802 section 3).
fn derive(
    kdf: pbkdf2::Algorithm,
    mac: hmac::Algorithm,
    m: Mechanism,
    password: &[u8],
    salt: &[u8],
    iterations: u32,
) -> (Vec<u8>, Vec<u8>) {
    let (_, _, hash) = m.algorithms().expect("a SCRAM mechanism");
    let mut salted = vec![0u8; hash.output_len()];
    let iterations = NonZeroU32::new(iterations).expect("checked against ITERATIONS_RANGE");
    pbkdf2::derive(kdf, iterations, salt, password, &mut salted);
    keys(mac, hash, &salted)
}

/// StoredKey and ServerKey of a SaltedPassword.
fn keys(
    mac: hmac::Algorithm,
    hash: &'static digest::Algorithm,
    salted: &[u8],
) -> (Vec<u8>, Vec<u8>) {
    let key = hmac::Key::new(mac, salted);
    let client_key = hmac::sign(&key, b"Client Key");
    let stored_key = digest::digest(hash, client_key.as_ref()).as_ref().to_vec();
    let server_key = hmac::sign(&key, b"Server Key").as_ref().to_vec();
    (stored_key, server_key)
}

/// One connection's progress through authentication.
#[derive(Debug, Default)]
pub struct Session {
    mechanism: Option<Mechanism>,
    scram: Option<ScramState>,
    /// After a SaslHandshake v0 the client sends raw SASL tokens, each a
    /// length-prefixed frame without a Kafka header, and gets them back so.
    pub raw_tokens: bool,
    /// An ApiVersions of a version served was answered.
    api_versions: bool,
}

#[derive(Debug)]
struct ScramState {
    user: String,
    /// The credential whose salt and iterations the server-first message
    /// gave: the client-final proof is checked against it, as Kafka's
    /// ScramSaslServer does, not against the users in force by then (a
    /// SIGHUP reload draws new salts for users given by a password).
    credential: ScramCredential,
    /// client-first-message-bare "," server-first-message, for the AuthMessage.
    transcript: String,
    nonce: String,
    gs2_header: String,
}

/// What a SaslAuthenticate round produced.
#[derive(Debug)]
pub enum Step {
    /// Send these bytes and wait for the client's next message.
    Continue(Vec<u8>),
    /// Authenticated.
    Done {
        /// Who.
        user: String,
        /// The last bytes for the client (SCRAM's server-final message; empty for PLAIN).
        reply: Vec<u8>,
    },
    /// Refused; the message goes to the client, the connection closes.
    Failed(String),
    /// A PLAIN password to check by a PBKDF2 run: [`Derivation::run`] gives
    /// the step.
    Derive(Derivation),
}

const BAD_CREDENTIALS: &str = "Authentication failed: invalid credentials";

/// The value of attribute `key` in a SCRAM message (`k=value` fields joined by `,`).
fn attribute<'a>(fields: &[&'a str], key: char) -> Option<&'a str> {
    fields.iter().find_map(|f| {
        let mut c = f.chars();
        (c.next() == Some(key) && c.next() == Some('=')).then(|| &f[2..])
    })
}

/// A SCRAM user name with `=2C` and `=3D` decoded (RFC 5802 section 5.1).
fn sasl_name(s: &str) -> Option<String> {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find('=') {
        out.push_str(&rest[..i]);
        match rest.get(i + 1..i + 3) {
            Some("2C") => out.push(','),
            Some("3D") => out.push('='),
            _ => return None,
        }
        rest = &rest[i + 3..];
    }
    out.push_str(rest);
    Some(out)
}

impl Session {
    /// SaslHandshake: picks `mechanism` if it is enabled and none was picked yet.
    pub fn handshake(&mut self, auth: &Authenticator, mechanism: &str) -> bool {
        match Mechanism::parse(mechanism).filter(|m| auth.mechanisms.contains(m)) {
            Some(m) if self.mechanism.is_none() => {
                self.mechanism = Some(m);
                true
            }
            _ => false,
        }
    }

    /// Whether an ApiVersions may be answered now, as Kafka's
    /// SaslServerAuthenticator answers it: before the SaslHandshake, and once,
    /// except that one of a version not served (`served` false, answered with
    /// UNSUPPORTED_VERSION) leaves the client free to ask again. Otherwise the
    /// connection closes: a client cannot keep it open with ApiVersions
    /// without ever authenticating.
    pub fn api_versions(&mut self, served: bool) -> bool {
        if self.api_versions || self.mechanism.is_some() {
            return false;
        }
        self.api_versions = served;
        true
    }

    /// Whether a SaslHandshake chose a mechanism.
    pub fn has_mechanism(&self) -> bool {
        self.mechanism.is_some()
    }

    /// One SaslAuthenticate round.
    pub fn authenticate(&mut self, auth: &Authenticator, bytes: &[u8]) -> Step {
        match self.mechanism {
            None => Step::Failed("SaslAuthenticate before SaslHandshake".into()),
            Some(Mechanism::Plain) => plain(auth, bytes),
            Some(m) => match self.scram.take() {
                None => self.scram_first(auth, m, bytes),
                Some(state) => scram_final(m, &state, bytes),
            },
        }
    }

    fn scram_first(&mut self, auth: &Authenticator, m: Mechanism, bytes: &[u8]) -> Step {
        let Ok(msg) = std::str::from_utf8(bytes) else {
            return Step::Failed("SCRAM client-first message is not UTF-8".into());
        };
        // gs2-header: "n,," or "y,," (no channel binding), optionally with an authzid.
        let mut parts = msg.splitn(3, ',');
        let (Some(cb), Some(authzid), Some(bare)) = (parts.next(), parts.next(), parts.next())
        else {
            return Step::Failed("malformed SCRAM client-first message".into());
        };
        if cb != "n" && cb != "y" {
            return Step::Failed("SCRAM channel binding is not supported".into());
        }
        let fields: Vec<&str> = bare.split(',').collect();
        let (Some(name), Some(client_nonce)) = (attribute(&fields, 'n'), attribute(&fields, 'r'))
        else {
            return Step::Failed("malformed SCRAM client-first message".into());
        };
        let Some(user) = sasl_name(name) else {
            return Step::Failed("malformed SCRAM user name".into());
        };
        if let Some(a) = authzid.strip_prefix("a=") {
            if sasl_name(a).as_deref() != Some(user.as_str()) {
                return Step::Failed(
                    "an authorization id other than the user is not supported".into(),
                );
            }
        }
        let Some(cred) = auth.users.get(&user).and_then(|u| u.scram.get(&m)) else {
            return Step::Failed(BAD_CREDENTIALS.into());
        };
        let mut server_nonce = [0u8; 18];
        if auth.rng.fill(&mut server_nonce).is_err() {
            return Step::Failed("no random numbers for the nonce".into());
        }
        let nonce = format!("{client_nonce}{}", B64.encode(server_nonce));
        let server_first = format!(
            "r={nonce},s={},i={}",
            B64.encode(&cred.salt),
            cred.iterations
        );
        self.scram = Some(ScramState {
            user,
            credential: cred.clone(),
            transcript: format!("{bare},{server_first}"),
            nonce,
            gs2_header: format!("{cb},{authzid},"),
        });
        Step::Continue(server_first.into_bytes())
    }
}

fn plain(auth: &Authenticator, bytes: &[u8]) -> Step {
    let mut parts = bytes.split(|&b| b == 0);
    let (Some(authzid), Some(user), Some(password), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Step::Failed("malformed PLAIN message".into());
    };
    let Ok(user) = std::str::from_utf8(user) else {
        return Step::Failed(BAD_CREDENTIALS.into());
    };
    if !authzid.is_empty() && authzid != user.as_bytes() {
        return Step::Failed("an authorization id other than the user is not supported".into());
    }
    let Some(u) = auth.users.get(user) else {
        return Step::Failed(BAD_CREDENTIALS.into());
    };
    let accepted = match &u.password {
        Some(p) => same(p, password),
        None if u.scram.is_empty() => false,
        None if auth.accepted_before(user, password) => true,
        None => {
            return Step::Derive(Derivation {
                user: user.to_string(),
                password: password.to_vec(),
            })
        }
    };
    if accepted {
        Step::Done {
            user: user.to_string(),
            reply: Vec::new(),
        }
    } else {
        Step::Failed(BAD_CREDENTIALS.into())
    }
}

fn scram_final(m: Mechanism, state: &ScramState, bytes: &[u8]) -> Step {
    let (_, mac, hash) = m.algorithms().expect("a SCRAM mechanism");
    let Ok(msg) = std::str::from_utf8(bytes) else {
        return Step::Failed("SCRAM client-final message is not UTF-8".into());
    };
    let Some((without_proof, proof)) = msg.rsplit_once(",p=") else {
        return Step::Failed("malformed SCRAM client-final message".into());
    };
    let fields: Vec<&str> = without_proof.split(',').collect();
    if attribute(&fields, 'c') != Some(&B64.encode(&state.gs2_header)) {
        return Step::Failed("SCRAM channel binding does not match".into());
    }
    // RFC 5802 wants the server's nonce echoed exactly. librdkafka (2.0 at least)
    // sends its own nonce in front of it once more; Kafka accepted a nonce that
    // ends with the server's until CVE-2024-56128's fix made it require the
    // whole, and this broker still accepts it. The server's part, fresh for
    // this exchange, is what prevents replays, and the proof covers the nonce
    // the client sent.
    if !attribute(&fields, 'r').is_some_and(|r| r.ends_with(&state.nonce)) {
        return Step::Failed("SCRAM nonce does not match".into());
    }
    let Ok(proof) = B64.decode(proof) else {
        return Step::Failed("malformed SCRAM proof".into());
    };
    let cred = &state.credential;
    let auth_message = format!("{},{without_proof}", state.transcript);
    let client_signature = hmac::sign(
        &hmac::Key::new(mac, &cred.stored_key),
        auth_message.as_bytes(),
    );
    if proof.len() != client_signature.as_ref().len() {
        return Step::Failed(BAD_CREDENTIALS.into());
    }
    let client_key: Vec<u8> = proof
        .iter()
        .zip(client_signature.as_ref())
        .map(|(p, s)| p ^ s)
        .collect();
    if !same(digest::digest(hash, &client_key).as_ref(), &cred.stored_key) {
        return Step::Failed(BAD_CREDENTIALS.into());
    }
    let server_signature = hmac::sign(
        &hmac::Key::new(mac, &cred.server_key),
        auth_message.as_bytes(),
    );
    Step::Done {
        user: state.user.clone(),
        reply: format!("v={}", B64.encode(server_signature.as_ref())).into_bytes(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn authenticator(mechanisms: &[Mechanism]) -> (tempfile::TempDir, Authenticator) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("users.json");
        std::fs::write(&path, r#"{"user": "pencil", "a,b=c": "x"}"#).unwrap();
        let auth = Authenticator::load(&path, mechanisms).unwrap();
        (dir, auth)
    }

    /// The client side of SCRAM, as RFC 5802 describes it.
    fn client_final(
        m: Mechanism,
        password: &str,
        client_first_bare: &str,
        server_first: &str,
    ) -> (String, Vec<u8>) {
        let (kdf, mac, hash) = m.algorithms().unwrap();
        let fields: Vec<&str> = server_first.split(',').collect();
        let nonce = attribute(&fields, 'r').unwrap();
        let salt = B64.decode(attribute(&fields, 's').unwrap()).unwrap();
        let iterations: u32 = attribute(&fields, 'i').unwrap().parse().unwrap();
        let mut salted = vec![0u8; hash.output_len()];
        pbkdf2::derive(
            kdf,
            NonZeroU32::new(iterations).unwrap(),
            &salt,
            password.as_bytes(),
            &mut salted,
        );
        let key = hmac::Key::new(mac, &salted);
        let client_key = hmac::sign(&key, b"Client Key");
        let stored_key = digest::digest(hash, client_key.as_ref());
        let without_proof = format!("c=biws,r={nonce}");
        let auth_message = format!("{client_first_bare},{server_first},{without_proof}");
        let signature = hmac::sign(
            &hmac::Key::new(mac, stored_key.as_ref()),
            auth_message.as_bytes(),
        );
        let proof: Vec<u8> = client_key
            .as_ref()
            .iter()
            .zip(signature.as_ref())
            .map(|(a, b)| a ^ b)
            .collect();
        let server_key = hmac::sign(&key, b"Server Key");
        let expected = hmac::sign(
            &hmac::Key::new(mac, server_key.as_ref()),
            auth_message.as_bytes(),
        );
        (
            format!("{without_proof},p={}", B64.encode(proof)),
            expected.as_ref().to_vec(),
        )
    }

    fn scram(auth: &Authenticator, m: Mechanism, user: &str, password: &str) -> Step {
        let mut s = Session::default();
        assert!(s.handshake(auth, m.name()));
        let bare = format!("n={user},r=fyko+d2lbbFgONRv9qkxdawL");
        let Step::Continue(first) = s.authenticate(auth, format!("n,,{bare}").as_bytes()) else {
            panic!("no server-first message");
        };
        let first = String::from_utf8(first).unwrap();
        assert!(first.starts_with("r=fyko+d2lbbFgONRv9qkxdawL"), "{first}");
        let (last, expected) = client_final(m, password, &bare, &first);
        let step = s.authenticate(auth, last.as_bytes());
        if let Step::Done { reply, .. } = &step {
            assert_eq!(reply, format!("v={}", B64.encode(expected)).as_bytes());
        }
        step
    }

    #[test]
    fn scram_accepts_the_password_and_refuses_others() {
        let (_d, auth) = authenticator(&Mechanism::ALL);
        for m in [Mechanism::ScramSha256, Mechanism::ScramSha512] {
            assert!(
                matches!(scram(&auth, m, "user", "pencil"), Step::Done { ref user, .. } if user == "user"),
                "{m:?}"
            );
            assert!(
                matches!(scram(&auth, m, "user", "pencil2"), Step::Failed(_)),
                "{m:?}"
            );
            // Escaped names: "a,b=c" travels as "a=2Cb=3Dc".
            assert!(
                matches!(scram(&auth, m, "a=2Cb=3Dc", "x"), Step::Done { ref user, .. } if user == "a,b=c"),
                "{m:?}"
            );
            let mut s = Session::default();
            assert!(s.handshake(&auth, m.name()));
            assert!(matches!(
                s.authenticate(&auth, b"n,,n=nobody,r=abc"),
                Step::Failed(_)
            ));
        }
    }

    /// The final message authenticates its own exchange only: the right
    /// one does (the control), the same proof with a nonce that only ends
    /// with the server's (which the broker accepts for librdkafka) fails at
    /// the proof, and a recorded final message replayed in a new exchange
    /// fails.
    #[test]
    fn scram_refuses_a_replayed_or_altered_final_message() {
        let (_d, auth) = authenticator(&[Mechanism::ScramSha256]);
        let m = Mechanism::ScramSha256;
        let bare = "n=user,r=abc";
        let start = || {
            let mut s = Session::default();
            assert!(s.handshake(&auth, m.name()));
            let Step::Continue(first) = s.authenticate(&auth, format!("n,,{bare}").as_bytes())
            else {
                panic!("client-first refused")
            };
            (s, String::from_utf8(first).unwrap())
        };
        let (mut s, first) = start();
        let (last, _) = client_final(m, "pencil", bare, &first);
        assert!(
            matches!(s.authenticate(&auth, last.as_bytes()), Step::Done { ref user, .. } if user == "user"),
            "the unaltered final message authenticates"
        );
        // A prefix before the server's whole nonce passes the nonce check;
        // the proof, computed over the other nonce, does not.
        let (mut s, first) = start();
        let (last, _) = client_final(m, "pencil", bare, &first);
        let nonce = last
            .split(',')
            .find_map(|f| f.strip_prefix("r="))
            .unwrap()
            .to_string();
        let altered = last.replacen(&format!("r={nonce}"), &format!("r=x{nonce}"), 1);
        assert!(matches!(
            s.authenticate(&auth, altered.as_bytes()),
            Step::Failed(_)
        ));
        // Replayed in a new exchange (the server's nonce is new).
        let (mut s, _) = start();
        assert!(matches!(
            s.authenticate(&auth, last.as_bytes()),
            Step::Failed(_)
        ));
    }

    /// A reload between client-first and client-final (a SIGHUP) draws new
    /// salts for users given by a password: the final message, proved with
    /// the salt the server-first message gave, still logs in, as with Kafka.
    #[test]
    fn a_scram_login_in_progress_survives_a_reload_of_the_users() {
        let (dir, auth) = authenticator(&[Mechanism::ScramSha256, Mechanism::ScramSha512]);
        for m in [Mechanism::ScramSha256, Mechanism::ScramSha512] {
            let mut s = Session::default();
            assert!(s.handshake(&auth, m.name()));
            let bare = "n=user,r=fyko+d2lbbFgONRv9qkxdawL";
            let Step::Continue(first) = s.authenticate(&auth, format!("n,,{bare}").as_bytes())
            else {
                panic!("no server-first message");
            };
            let first = String::from_utf8(first).unwrap();
            let reloaded = Authenticator::load(&dir.path().join("users.json"), &auth.mechanisms)
                .expect("the same users load again");
            let salt = |a: &Authenticator| a.users["user"].scram[&m].salt.clone();
            assert_ne!(salt(&auth), salt(&reloaded), "{m:?}: a new salt is drawn");
            let (last, expected) = client_final(m, "pencil", bare, &first);
            match s.authenticate(&reloaded, last.as_bytes()) {
                Step::Done { user, reply } => {
                    assert_eq!(user, "user");
                    assert_eq!(reply, format!("v={}", B64.encode(expected)).as_bytes());
                }
                other => panic!("{m:?}: the login failed across the reload: {other:?}"),
            }
        }
    }

    #[test]
    fn plain_checks_name_password_and_authzid() {
        let (_d, auth) = authenticator(&[Mechanism::Plain]);
        let run = |bytes: &[u8]| {
            let mut s = Session::default();
            assert!(s.handshake(&auth, "PLAIN"));
            s.authenticate(&auth, bytes)
        };
        assert!(matches!(run(b"\0user\0pencil"), Step::Done { .. }));
        assert!(matches!(run(b"user\0user\0pencil"), Step::Done { .. }));
        assert!(matches!(run(b"\0user\0pencil!"), Step::Failed(_)));
        assert!(matches!(run(b"\0user\0pencil\0"), Step::Failed(_)));
        assert!(matches!(run(b"other\0user\0pencil"), Step::Failed(_)));
        assert!(matches!(run(b"\0nobody\0pencil"), Step::Failed(_)));
    }

    #[test]
    fn handshake_accepts_only_enabled_mechanisms_once() {
        let (_d, auth) = authenticator(&[Mechanism::ScramSha512]);
        let mut s = Session::default();
        assert!(!s.handshake(&auth, "PLAIN"));
        assert!(!s.handshake(&auth, "scram-sha-512"));
        assert!(s.handshake(&auth, "SCRAM-SHA-512"));
        assert!(
            !s.handshake(&auth, "SCRAM-SHA-512"),
            "one handshake per connection"
        );
        assert!(matches!(
            Session::default().authenticate(&auth, b"n,,n=user,r=x"),
            Step::Failed(_)
        ));
    }

    #[test]
    fn api_versions_is_answered_once_before_the_handshake() {
        let (_d, auth) = authenticator(&[Mechanism::Plain]);
        let mut s = Session::default();
        assert!(s.api_versions(false), "an unsupported version");
        assert!(s.api_versions(false), "asked again");
        assert!(s.api_versions(true));
        assert!(!s.api_versions(true), "a second one");
        assert!(!s.api_versions(false));
        let mut s = Session::default();
        assert!(s.handshake(&auth, "PLAIN"));
        assert!(!s.api_versions(true), "after the handshake");
        assert!(!s.api_versions(false));
    }

    #[test]
    fn users_file_errors_name_the_file() {
        let dir = tempfile::tempdir().unwrap();
        for (text, says) in [
            ("[1, 2]", "JSON object"),
            ("{}", "no users"),
            (r#"{"": "x"}"#, "must not be empty"),
            (r#"{"a": ""}"#, "must not be empty"),
            // A password where salted credentials go, or as the whole file,
            // is not quoted back: the message reaches the log.
            (
                r#"{"alice": {"SCRAM-SHA-256": "Tr0ub4dor&3"}}"#,
                "invalid type, expected struct SaltedCredential",
            ),
            (r#""Tr0ub4dor&3""#, "invalid type, expected a map"),
        ] {
            let path = dir.path().join("users.json");
            std::fs::write(&path, text).unwrap();
            let e = Authenticator::load(&path, &Mechanism::ALL)
                .unwrap_err()
                .to_string();
            assert!(e.contains("users.json") && e.contains(says), "{text}: {e}");
            assert!(!e.contains("Tr0ub4dor"), "{e}");
        }
        let e = Authenticator::load(&dir.path().join("missing.json"), &Mechanism::ALL)
            .unwrap_err()
            .to_string();
        assert!(e.contains("missing.json"), "{e}");
    }

    /// A FIFO at the users file's path (swapped in while the broker runs,
    /// before a SIGHUP or an alteration) is refused, naming it: its read
    /// waited forever, holding the users file's lock, so every later
    /// alteration and reload waited too, and so did the shutdown. A temporary
    /// file's name taken by a FIFO fails the write instead of waiting.
    #[cfg(unix)]
    #[test]
    fn a_fifo_at_the_users_files_path_is_refused_not_waited_for() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("users.json");
        std::fs::write(&path, r#"{"user": "pencil"}"#).unwrap();
        let auth = Authenticator::load(&path, &Mechanism::ALL).unwrap();
        let fifo = |at: &Path| nix::unistd::mkfifo(at, nix::sys::stat::Mode::S_IRWXU).unwrap();
        let within_10_s = |f: Box<dyn FnOnce() -> Result<()> + Send>| {
            let (tx, rx) = std::sync::mpsc::channel();
            std::thread::spawn(move || {
                let _ = tx.send(f());
            });
            rx.recv_timeout(std::time::Duration::from_secs(10))
                .expect("waited on a FIFO")
                .unwrap_err()
                .to_string()
        };
        let change = || {
            vec![ScramChange::Delete {
                user: "user".into(),
                mechanism: Mechanism::ScramSha256,
            }]
        };
        // The temporary file's name taken.
        let tmp = dir.path().join(".users.json.tmp");
        fifo(&tmp);
        let auth = std::sync::Arc::new(auth);
        let e = {
            let auth = std::sync::Arc::clone(&auth);
            within_10_s(Box::new(move || auth.altered(&change()).map(drop)))
        };
        assert!(
            e.contains("users.json") && e.contains("not a regular file"),
            "{e}"
        );
        assert!(!tmp.exists(), "the failed write removes its temporary name");
        // The file itself.
        std::fs::remove_file(&path).unwrap();
        fifo(&path);
        let at = path.clone();
        let e = within_10_s(Box::new(move || {
            Authenticator::load(&at, &Mechanism::ALL).map(drop)
        }));
        assert!(
            e.contains("users.json") && e.contains("not a regular file"),
            "{e}"
        );
        let e = within_10_s(Box::new(move || auth.altered(&change()).map(drop)));
        assert!(
            e.contains("users.json") && e.contains("not a regular file"),
            "{e}"
        );
    }

    fn plain_auth(auth: &Authenticator, user: &str, password: &str) -> Step {
        let mut s = Session::default();
        assert!(s.handshake(auth, "PLAIN"));
        match s.authenticate(auth, format!("\0{user}\0{password}").as_bytes()) {
            Step::Derive(d) => d.run(auth),
            step => step,
        }
    }

    /// A user given by salted credentials only: SCRAM works with the mechanism
    /// it has a credential for (its own iteration count sent to the client),
    /// not with another; PLAIN works by deriving the credential again.
    #[test]
    fn salted_credentials_authenticate_without_a_password_in_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("users.json");
        let cred = salted_credential(Mechanism::ScramSha256, b"s3cret", 5000).unwrap();
        let users = serde_json::json!({
            "carol": {"SCRAM-SHA-256": cred},
            "user": "pencil",
        });
        std::fs::write(&path, users.to_string()).unwrap();
        let auth = Authenticator::load(&path, &Mechanism::ALL).unwrap();
        assert!(!std::fs::read_to_string(&path).unwrap().contains("s3cret"));
        let m = Mechanism::ScramSha256;
        assert!(
            matches!(scram(&auth, m, "carol", "s3cret"), Step::Done { ref user, .. } if user == "carol")
        );
        assert!(matches!(
            scram(&auth, m, "carol", "s3cret!"),
            Step::Failed(_)
        ));
        let mut s = Session::default();
        assert!(s.handshake(&auth, m.name()));
        let Step::Continue(first) = s.authenticate(&auth, b"n,,n=carol,r=abc") else {
            panic!()
        };
        assert!(String::from_utf8(first).unwrap().ends_with(",i=5000"));
        // No SCRAM-SHA-512 credential: refused as an unknown user would be.
        let mut s = Session::default();
        assert!(s.handshake(&auth, Mechanism::ScramSha512.name()));
        assert!(
            matches!(s.authenticate(&auth, b"n,,n=carol,r=abc"), Step::Failed(ref e) if e == BAD_CREDENTIALS)
        );
        assert!(matches!(
            plain_auth(&auth, "carol", "s3cret"),
            Step::Done { .. }
        ));
        assert!(matches!(
            plain_auth(&auth, "carol", "s3cre"),
            Step::Failed(_)
        ));
        // Users with passwords beside them work as before.
        assert!(matches!(
            scram(&auth, Mechanism::ScramSha512, "user", "pencil"),
            Step::Done { .. }
        ));
        assert!(matches!(
            plain_auth(&auth, "user", "pencil"),
            Step::Done { .. }
        ));
    }

    /// A PLAIN login of a user known by salted credentials only needs a
    /// derivation until one accepted the password; then that password, and
    /// only it, is accepted at once, until the users change.
    #[test]
    fn an_accepted_plain_password_is_checked_again_without_a_derivation() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("users.json");
        let cred = salted_credential(Mechanism::ScramSha256, b"s3cret", 4096).unwrap();
        std::fs::write(
            &path,
            serde_json::json!({"carol": {"SCRAM-SHA-256": cred}}).to_string(),
        )
        .unwrap();
        let auth = Authenticator::load(&path, &Mechanism::ALL).unwrap();
        let first = |auth: &Authenticator, password: &str| {
            let mut s = Session::default();
            assert!(s.handshake(auth, "PLAIN"));
            s.authenticate(auth, format!("\0carol\0{password}").as_bytes())
        };
        let Step::Derive(d) = first(&auth, "wrong") else {
            panic!("no derivation")
        };
        assert!(matches!(d.run(&auth), Step::Failed(_)));
        assert!(matches!(first(&auth, "wrong"), Step::Derive(_)));
        let Step::Derive(d) = first(&auth, "s3cret") else {
            panic!("no derivation")
        };
        assert!(matches!(d.run(&auth), Step::Done { ref user, .. } if user == "carol"));
        assert!(matches!(first(&auth, "s3cret"), Step::Done { .. }));
        assert!(matches!(first(&auth, "s3cret!"), Step::Derive(_)));
        // New users (an alteration, a reload) remember nothing.
        let next = auth.altered(&[]).unwrap().authenticator;
        assert!(matches!(first(&next, "s3cret"), Step::Derive(_)));
    }

    #[test]
    fn malformed_salted_credentials_are_refused_naming_the_user() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("users.json");
        let good =
            serde_json::to_value(salted_credential(Mechanism::ScramSha512, b"x", 4096).unwrap())
                .unwrap();
        let with = |k: &str, v: serde_json::Value| {
            let mut c = good.clone();
            c[k] = v;
            c
        };
        let cases = [
            (
                serde_json::json!({"dave": {"SCRAM-SHA-1": good}}),
                "not a SCRAM mechanism",
            ),
            (
                serde_json::json!({"dave": {"PLAIN": good}}),
                "not a SCRAM mechanism",
            ),
            (
                serde_json::json!({"dave": {"SCRAM-SHA-512": with("iterations", 1000.into())}}),
                "iterations 1000",
            ),
            (
                serde_json::json!({"dave": {"SCRAM-SHA-512": with("salt", "%%".into())}}),
                "salt is not base64",
            ),
            (
                serde_json::json!({"dave": {"SCRAM-SHA-512": with("salt", "".into())}}),
                "salt is empty",
            ),
            // A SHA-256 key where SHA-512 needs 64 bytes.
            (
                serde_json::json!({"dave": {"SCRAM-SHA-512": with("stored_key", B64.encode([1u8; 32]).into())}}),
                "stored_key has 32 bytes",
            ),
            (
                serde_json::json!({"dave": {"SCRAM-SHA-512": with("extra", 1.into())}}),
                "unknown field",
            ),
            (serde_json::json!({"dave": {}}), "must not be empty"),
            (
                serde_json::json!({"dave": 7}),
                "expected a password or salted SCRAM credentials",
            ),
        ];
        for (users, want) in cases {
            std::fs::write(&path, users.to_string()).unwrap();
            let e = Authenticator::load(&path, &Mechanism::ALL)
                .unwrap_err()
                .to_string();
            assert!(e.contains(want) && e.contains("users.json"), "{users}: {e}");
            if want != "must not be empty" {
                assert!(e.contains("dave"), "{e}");
            }
        }
        assert!(salted_credential(Mechanism::Plain, b"x", 4096).is_err());
        assert!(salted_credential(Mechanism::ScramSha256, b"x", 16385).is_err());
    }

    /// The salted password a client sends for `m` in AlterUserScramCredentials.
    fn salted_password(m: Mechanism, iterations: u32, salt: &[u8], password: &[u8]) -> Vec<u8> {
        let (kdf, _, hash) = m.algorithms().unwrap();
        let mut salted = vec![0u8; hash.output_len()];
        let n = NonZeroU32::new(iterations).unwrap();
        pbkdf2::derive(kdf, n, salt, password, &mut salted);
        salted
    }

    /// A user given by a password has a credential for every mechanism. One
    /// altered with a new password through one mechanism (the usual rotation,
    /// `kafka-configs --alter --add-config 'SCRAM-SHA-256=[password=new]'`)
    /// keeps the others, as in Kafka, where each mechanism's credential is
    /// its own. PLAIN checked only the first (SCRAM-SHA-512) and refused the
    /// new password; it now takes a password any credential takes.
    #[test]
    fn a_password_altered_through_one_mechanism_logs_in_through_plain() {
        let (_dir, auth) = authenticator(&Mechanism::ALL);
        let m = Mechanism::ScramSha256;
        let salted = salted_password(m, 4096, b"salt", b"new");
        let next = auth
            .altered(&[ScramChange::Upsert {
                user: "user".into(),
                mechanism: m,
                iterations: 4096,
                salt: b"salt".to_vec(),
                salted_password: salted,
            }])
            .unwrap()
            .authenticator;
        assert!(matches!(scram(&next, m, "user", "new"), Step::Done { .. }));
        assert!(matches!(
            plain_auth(&next, "user", "new"),
            Step::Done { .. }
        ));
        // The other mechanism's credential is untouched, as in Kafka.
        let other = Mechanism::ScramSha512;
        assert!(matches!(
            scram(&next, other, "user", "pencil"),
            Step::Done { .. }
        ));
        assert!(matches!(
            plain_auth(&next, "user", "pencil"),
            Step::Done { .. }
        ));
        assert!(!matches!(
            plain_auth(&next, "user", "neither"),
            Step::Done { .. }
        ));
        let mut creds = next.scram_credentials("user").unwrap();
        creds.sort_by_key(|(m, _)| m.name());
        assert_eq!(creds.len(), 2, "{creds:?}");
    }

    /// An alteration rewrote the users file from the users in memory: a
    /// hand edit not yet loaded (a user added, a user removed to revoke them)
    /// was undone without a word, the revoked user able to log in again after
    /// the next SIGHUP. The file is now rewritten only while it holds what the
    /// broker read or wrote last; otherwise the alteration is refused and the
    /// file left as edited. A reload (SIGHUP) makes alterations possible again.
    #[test]
    fn an_alteration_never_undoes_an_edit_of_the_users_file() {
        let (dir, auth) = authenticator(&Mechanism::ALL);
        let path = dir.path().join("users.json");
        let m = Mechanism::ScramSha256;
        let upsert = |user: &str| ScramChange::Upsert {
            user: user.into(),
            mechanism: m,
            iterations: 4096,
            salt: b"salt".to_vec(),
            salted_password: salted_password(m, 4096, b"salt", b"pw"),
        };
        // Written by the broker: a later alteration goes on from it.
        let auth = auth.altered(&[upsert("carol")]).unwrap().authenticator;
        let edited = r#"{"user": "pencil", "bob": "builder"}"#;
        std::fs::write(&path, edited).unwrap();
        let e = auth
            .altered(&[upsert("dave")])
            .expect_err("the edit is not undone");
        assert!(
            e.to_string()
                .contains("changed since the broker last read it")
                && e.to_string().contains("SIGHUP"),
            "{e}"
        );
        assert_eq!(std::fs::read_to_string(&path).unwrap(), edited);
        let reloaded = Authenticator::load(&path, &Mechanism::ALL).unwrap();
        let altered = reloaded.altered(&[upsert("dave")]).unwrap().authenticator;
        assert_eq!(altered.user_names(), ["bob", "dave", "user"]);
        let on_disk = Authenticator::load(&path, &Mechanism::ALL).unwrap();
        assert_eq!(on_disk.user_names(), ["bob", "dave", "user"]);
        // A file gone is not written again from memory either.
        std::fs::remove_file(&path).unwrap();
        assert!(altered.altered(&[upsert("erin")]).is_err());
        assert!(!path.exists());
    }

    /// An alteration resolved the users file's link for its read and digest
    /// check, and again for its write: a link retargeted in between (an
    /// atomic swap of the configuration) had the new target overwritten with
    /// the old file's users plus the change, silently undoing the swap. The
    /// path is resolved once now: the change lands in the file that was
    /// read, and the swapped-in file is left as it is.
    #[cfg(unix)]
    #[test]
    fn an_alteration_writes_the_users_file_it_read_when_the_link_is_swapped_meanwhile() {
        let dir = tempfile::tempdir().unwrap();
        let old = dir.path().join("old.json");
        let new = dir.path().join("new.json");
        std::fs::write(&old, r#"{"user": "pencil", "carol": "x"}"#).unwrap();
        let swapped_in = br#"{"user": "pencil", "dave": "y"}"#;
        std::fs::write(&new, swapped_in).unwrap();
        let link = dir.path().join("users.json");
        std::os::unix::fs::symlink(&old, &link).unwrap();
        let auth = Authenticator::load(&link, &Mechanism::ALL).unwrap();
        let (link2, new2) = (link.clone(), new.clone());
        BETWEEN_USERS_READ_AND_WRITE.with(|b| {
            *b.borrow_mut() = Some(Box::new(move || {
                let tmp = link2.with_extension("swap");
                std::os::unix::fs::symlink(&new2, &tmp).unwrap();
                std::fs::rename(&tmp, &link2).unwrap();
            }));
        });
        let m = Mechanism::ScramSha256;
        auth.altered(&[ScramChange::Upsert {
            user: "zed".into(),
            mechanism: m,
            iterations: 4096,
            salt: b"salt".to_vec(),
            salted_password: salted_password(m, 4096, b"salt", b"hunter2"),
        }])
        .unwrap();
        assert!(BETWEEN_USERS_READ_AND_WRITE.with(|b| b.borrow().is_none()));
        assert_eq!(std::fs::read_link(&link).unwrap(), new);
        assert_eq!(
            std::fs::read(&new).unwrap(),
            swapped_in,
            "the swapped-in file is unchanged"
        );
        assert_eq!(
            Authenticator::load(&old, &Mechanism::ALL)
                .unwrap()
                .user_names(),
            ["carol", "user", "zed"]
        );
    }

    /// A users file given as a symbolic link (configuration management links
    /// it) was replaced by an alteration with a regular file holding a copy:
    /// later edits of the file the link named, and a SIGHUP, were ignored (a
    /// removed user kept logging in). The file the link resolves to is
    /// replaced now, and the link stays.
    #[cfg(unix)]
    #[test]
    fn an_alteration_through_a_symlinked_users_file_keeps_the_link() {
        let dir = tempfile::tempdir().unwrap();
        let real_dir = dir.path().join("managed");
        std::fs::create_dir(&real_dir).unwrap();
        let target = real_dir.join("target.json");
        std::fs::write(&target, r#"{"user": "pencil", "carol": "x"}"#).unwrap();
        let link = dir.path().join("users.json");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        let auth = Authenticator::load(&link, &Mechanism::ALL).unwrap();
        let m = Mechanism::ScramSha256;
        let altered = auth
            .altered(&[ScramChange::Upsert {
                user: "zed".into(),
                mechanism: m,
                iterations: 4096,
                salt: b"salt".to_vec(),
                salted_password: salted_password(m, 4096, b"salt", b"hunter2"),
            }])
            .unwrap();
        assert!(altered.not_durable.is_none());
        assert!(
            std::fs::symlink_metadata(&link)
                .unwrap()
                .file_type()
                .is_symlink(),
            "the users file is still a link"
        );
        assert_eq!(std::fs::read_link(&link).unwrap(), target);
        assert!(!real_dir.join(".target.json.tmp").exists());
        assert!(!dir.path().join(".users.json.tmp").exists());
        let on_target = Authenticator::load(&target, &Mechanism::ALL).unwrap();
        assert_eq!(on_target.user_names(), ["carol", "user", "zed"]);
        let next = altered.authenticator;
        assert!(matches!(plain_auth(&next, "carol", "x"), Step::Done { .. }));
        // The real file edited to remove carol, then a reload (SIGHUP) of the
        // configured path: carol no longer logs in, and another alteration
        // goes through (the broker's digest is of the file it wrote).
        let mut users: serde_json::Map<String, serde_json::Value> =
            serde_json::from_slice(&std::fs::read(&target).unwrap()).unwrap();
        assert!(users.remove("carol").is_some());
        std::fs::write(&target, serde_json::to_vec(&users).unwrap()).unwrap();
        let reloaded = Authenticator::load(&link, &Mechanism::ALL).unwrap();
        assert_eq!(reloaded.user_names(), ["user", "zed"]);
        assert!(matches!(
            plain_auth(&reloaded, "carol", "x"),
            Step::Failed(_)
        ));
        assert!(matches!(
            scram(&reloaded, m, "zed", "hunter2"),
            Step::Done { .. }
        ));
        assert!(reloaded
            .altered(&[ScramChange::Delete {
                user: "zed".into(),
                mechanism: m,
            }])
            .is_ok());
        assert!(std::fs::symlink_metadata(&link)
            .unwrap()
            .file_type()
            .is_symlink());
        assert_eq!(
            Authenticator::load(&link, &Mechanism::ALL)
                .unwrap()
                .user_names(),
            ["user"]
        );
    }

    /// AlterUserScramCredentials' changes: applied to a copy, written to the
    /// file (which then loads to the same users), a user without credentials
    /// left removed; a file that cannot be written changes nothing.
    #[test]
    fn altered_users_are_written_and_load_again() {
        let (dir, auth) = authenticator(&Mechanism::ALL);
        let path = dir.path().join("users.json");
        let m = Mechanism::ScramSha512;
        let salted = salted_password(m, 4500, b"pepper", b"hunter2");
        let changes = [
            ScramChange::Upsert {
                user: "zed".into(),
                mechanism: m,
                iterations: 4500,
                salt: b"pepper".to_vec(),
                salted_password: salted,
            },
            ScramChange::Delete {
                user: "a,b=c".into(),
                mechanism: Mechanism::ScramSha256,
            },
            ScramChange::Delete {
                user: "a,b=c".into(),
                mechanism: Mechanism::ScramSha512,
            },
        ];
        let altered = auth.altered(&changes).unwrap();
        assert!(altered.not_durable.is_none());
        let next = altered.authenticator;
        assert_eq!(
            next.user_names(),
            ["user", "zed"],
            "a,b=c had no credential left"
        );
        assert!(matches!(
            scram(&next, m, "zed", "hunter2"),
            Step::Done { .. }
        ));
        assert_eq!(next.scram_credentials("zed").unwrap(), [(m, 4500)]);
        let reloaded = Authenticator::load(&path, &Mechanism::ALL).unwrap();
        assert_eq!(reloaded.user_names(), ["user", "zed"]);
        assert!(matches!(
            scram(&reloaded, m, "zed", "hunter2"),
            Step::Done { .. }
        ));
        assert!(matches!(
            plain_auth(&reloaded, "user", "pencil"),
            Step::Done { .. }
        ));
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(
            !text.contains("hunter2") && text.contains("\"user\": \"pencil\""),
            "{text}"
        );
        // Deleting the last credential of the last user is refused: the file
        // would not load again.
        let last: Vec<ScramChange> = [Mechanism::ScramSha256, Mechanism::ScramSha512]
            .into_iter()
            .flat_map(|mechanism| {
                ["user", "zed"].map(|user| ScramChange::Delete {
                    user: user.into(),
                    mechanism,
                })
            })
            .filter(|c| {
                let ScramChange::Delete { user, mechanism } = c else {
                    unreachable!()
                };
                next.scram_credentials(user)
                    .is_some_and(|creds| creds.iter().any(|(m, _)| m == mechanism))
            })
            .collect();
        let e = next.altered(&last).unwrap_err().to_string();
        assert!(e.contains("would leave no user"), "{e}");
        assert!(Authenticator::load(&path, &Mechanism::ALL).is_ok());
        // Deleting what is not there is refused; so is a write that fails.
        assert!(next.altered(&changes[1..2]).is_err());
        // A directory where the temporary file goes: the write fails.
        std::fs::create_dir(dir.path().join(".users.json.tmp")).unwrap();
        let e = next.altered(&changes[..1]).unwrap_err().to_string();
        assert!(
            e.contains("write SASL users") && e.contains("users.json"),
            "{e}"
        );
    }
}
