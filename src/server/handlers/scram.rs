//! SCRAM users through the Admin API (KIP-554): DescribeUserScramCredentials
//! lists users and the mechanisms and iterations of their credentials, never
//! the credentials; AlterUserScramCredentials adds, replaces and deletes them
//! and writes the users file (`--sasl-users`), as `kafka-configs --alter
//! --add-config 'SCRAM-SHA-256=[password=...]'` and AdminClient do. The client
//! salts the password itself; the broker keeps only what SCRAM needs.

use std::collections::HashSet;

use kafka_protocol::{
    messages::{
        alter_user_scram_credentials_response::AlterUserScramCredentialsResult,
        describe_user_scram_credentials_response::{
            CredentialInfo, DescribeUserScramCredentialsResult,
        },
        AlterUserScramCredentialsRequest, AlterUserScramCredentialsResponse,
        DescribeUserScramCredentialsRequest, DescribeUserScramCredentialsResponse,
    },
    protocol::StrBytes,
};

use crate::server::{
    codes,
    sasl::{iterations_acceptable, Mechanism, ScramChange},
    Ctx,
};

use codes::{DUPLICATE_RESOURCE, RESOURCE_NOT_FOUND, SECURITY_DISABLED, UNACCEPTABLE_CREDENTIAL};

pub(crate) const NO_SASL: &str = "SASL is not enabled on this broker (--sasl-users)";

/// Kafka's `ScramMechanism` type codes.
fn mechanism(code: i8) -> Option<Mechanism> {
    match code {
        1 => Some(Mechanism::ScramSha256),
        2 => Some(Mechanism::ScramSha512),
        _ => None,
    }
}

fn code_of(m: Mechanism) -> i8 {
    match m {
        Mechanism::ScramSha256 => 1,
        Mechanism::ScramSha512 => 2,
        Mechanism::Plain => 0,
    }
}

fn text(s: impl Into<String>) -> Option<StrBytes> {
    Some(StrBytes::from_string(s.into()))
}

pub(super) fn describe(
    ctx: &Ctx,
    req: &DescribeUserScramCredentialsRequest,
) -> DescribeUserScramCredentialsResponse {
    let resp = DescribeUserScramCredentialsResponse::default();
    let Some(auth) = ctx.security.sasl() else {
        return resp
            .with_error_code(SECURITY_DISABLED)
            .with_error_message(text(NO_SASL));
    };
    let asked: Vec<String> = match &req.users {
        Some(users) if !users.is_empty() => users.iter().map(|u| u.name.to_string()).collect(),
        // Every user with a SCRAM credential, as Kafka lists them: a user of
        // PLAIN alone has none.
        _ => auth
            .user_names()
            .into_iter()
            .filter(|u| auth.scram_credentials(u).is_some_and(|c| !c.is_empty()))
            .collect(),
    };
    let mut seen = HashSet::new();
    let duplicates: HashSet<&String> = asked.iter().filter(|u| !seen.insert(*u)).collect();
    let mut answered = HashSet::new();
    let results = asked
        .iter()
        .filter(|u| answered.insert(*u))
        .map(|user| {
            let r = DescribeUserScramCredentialsResult::default()
                .with_user(StrBytes::from_string(user.clone()));
            if duplicates.contains(user) {
                return r
                    .with_error_code(DUPLICATE_RESOURCE)
                    .with_error_message(text(
                    "Cannot describe SCRAM credentials for the same user twice in a single request",
                ));
            }
            match auth.scram_credentials(user).filter(|c| !c.is_empty()) {
                None => r
                    .with_error_code(RESOURCE_NOT_FOUND)
                    .with_error_message(text(
                        "Attempt to describe a user credential that does not exist",
                    )),
                Some(creds) => r.with_credential_infos(
                    creds
                        .into_iter()
                        .map(|(m, i)| {
                            CredentialInfo::default()
                                .with_mechanism(code_of(m))
                                .with_iterations(i32::try_from(i).unwrap_or(i32::MAX))
                        })
                        .collect(),
                ),
            }
        })
        .collect();
    resp.with_results(results)
}

type Errors = std::collections::HashMap<String, (i16, String)>;

/// What an AlterUserScramCredentials request asks, checked change by change.
#[derive(Default)]
struct Checked {
    /// Every user named, in the order they first appear (one result each).
    users: Vec<String>,
    /// The users in `users`, to find one without a search of them all.
    named: HashSet<String>,
    /// The first refusal of each refused user.
    errors: Errors,
    /// (user, mechanism) pairs seen: each may change once per request.
    pairs: HashSet<(String, Mechanism)>,
    changes: Vec<ScramChange>,
}

impl Checked {
    fn fail(&mut self, user: &str, code: i16, msg: &str) {
        self.errors
            .entry(user.to_string())
            .or_insert((code, msg.to_string()));
    }

    /// Notes `user` and checks what every change needs: a name, a known
    /// mechanism, no earlier change of the same credential.
    fn check(&mut self, user: &str, code: i8) -> Option<Mechanism> {
        if !self.named.contains(user) {
            self.named.insert(user.to_string());
            self.users.push(user.to_string());
        }
        let refusal = match mechanism(code) {
            _ if user.is_empty() => (UNACCEPTABLE_CREDENTIAL, "Username must not be empty"),
            None => (codes::UNSUPPORTED_SASL_MECHANISM, "Unknown SCRAM mechanism"),
            Some(m) if self.pairs.insert((user.to_string(), m)) => return Some(m),
            Some(_) => (
                DUPLICATE_RESOURCE,
                "A user credential cannot be altered twice in the same request",
            ),
        };
        self.fail(user, refusal.0, refusal.1);
        None
    }
}

pub(super) async fn alter(
    ctx: &std::sync::Arc<Ctx>,
    req: AlterUserScramCredentialsRequest,
) -> AlterUserScramCredentialsResponse {
    let mut c = Checked::default();
    for d in &req.deletions {
        let user = d.name.to_string();
        if let Some(m) = c.check(&user, d.mechanism) {
            c.changes.push(ScramChange::Delete { user, mechanism: m });
        }
    }
    for u in &req.upsertions {
        let user = u.name.to_string();
        let Some(m) = c.check(&user, u.mechanism) else {
            continue;
        };
        if !iterations_acceptable(u.iterations) {
            c.fail(
                &user,
                UNACCEPTABLE_CREDENTIAL,
                "Iterations must be between 4096 and 16384",
            );
        } else if u.salt.is_empty() || u.salted_password.is_empty() {
            c.fail(
                &user,
                UNACCEPTABLE_CREDENTIAL,
                "Salt and salted password must not be empty",
            );
        } else {
            c.changes.push(ScramChange::Upsert {
                user,
                mechanism: m,
                iterations: u32::try_from(u.iterations).expect("checked above"),
                salt: u.salt.to_vec(),
                salted_password: u.salted_password.to_vec(),
            });
        }
    }
    let Checked {
        users,
        mut errors,
        mut changes,
        ..
    } = c;
    // A user with any refused change has none applied.
    changes.retain(|c| {
        let (ScramChange::Delete { user, .. } | ScramChange::Upsert { user, .. }) = c;
        !errors.contains_key(user)
    });
    if !changes.is_empty() {
        let security = std::sync::Arc::clone(&ctx.security);
        let refused = crate::server::blocking(ctx, move || security.alter_scram(changes))
            .await
            .unwrap_or_else(|e| {
                let msg = format!("the alteration failed: {e}");
                users
                    .iter()
                    .map(|u| (u.clone(), (codes::UNKNOWN_SERVER_ERROR, msg.clone())))
                    .collect()
            });
        for (user, refusal) in refused {
            errors.entry(user).or_insert(refusal);
        }
    }
    let results = users
        .into_iter()
        .map(|user| {
            let r = AlterUserScramCredentialsResult::default()
                .with_user(StrBytes::from_string(user.clone()));
            match errors.get(&user) {
                Some((code, msg)) => r
                    .with_error_code(*code)
                    .with_error_message(text(msg.clone())),
                None => r,
            }
        })
        .collect();
    AlterUserScramCredentialsResponse::default().with_results(results)
}
