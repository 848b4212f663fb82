//! SaslHandshake and SaslAuthenticate on the wire; the mechanisms themselves are
//! in [`crate::server::sasl`].

use std::{
    collections::HashMap,
    net::{IpAddr, SocketAddr},
    sync::{Arc, LazyLock, Mutex, PoisonError},
    time::{Duration, Instant},
};

use bytes::{BufMut, Bytes, BytesMut};
use kafka_protocol::{
    messages::{
        SaslAuthenticateRequest, SaslAuthenticateResponse, SaslHandshakeRequest,
        SaslHandshakeResponse,
    },
    protocol::StrBytes,
};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, SemaphorePermit};

use crate::server::{codes, sasl, Ctx, Pending, Reply};

/// A raw SASL token after a SaslHandshake v0: answered as a raw token, or, on
/// failure, by closing the connection (what Kafka does; v0 has no error field).
pub(crate) async fn raw_token(
    ctx: &Arc<Ctx>,
    frame: &[u8],
    unauthenticated: &mut Option<sasl::Session>,
    peer: SocketAddr,
) -> (Pending, bool) {
    let arrived = Instant::now();
    let req = SaslAuthenticateRequest::default().with_auth_bytes(Bytes::copy_from_slice(frame));
    let (r, close) = authenticate(ctx, &req, unauthenticated, peer).await;
    if close {
        // Nothing to send: the connection just closes.
        return (answer(ctx, Reply::nothing(), true, arrived), true);
    }
    let mut out = BytesMut::with_capacity(4 + r.auth_bytes.len());
    out.put_i32(i32::try_from(r.auth_bytes.len()).unwrap_or(i32::MAX));
    out.extend_from_slice(&r.auth_bytes);
    (Box::pin(async move { Reply::frame(out) }), false)
}

/// SaslHandshake: chooses the mechanism, lists the enabled ones. Returns
/// whether the connection closes after the answer: as Kafka's authenticator
/// does when a handshake before authentication fails (a mechanism not
/// enabled, or a second handshake), so that a client cannot try mechanisms one
/// after another; that answer comes as a failed authentication's does (see
/// [`answer`]). Without SASL, and once authenticated, the handshake is
/// answered ILLEGAL_SASL_STATE and the connection goes on, as Kafka answers
/// it outside its authenticator.
pub(crate) fn handshake(
    ctx: &Ctx,
    req: &SaslHandshakeRequest,
    unauthenticated: &mut Option<sasl::Session>,
) -> (SaslHandshakeResponse, bool) {
    let r = SaslHandshakeResponse::default();
    let Some(auth) = ctx.security.sasl() else {
        return (r.with_error_code(codes::ILLEGAL_SASL_STATE), false);
    };
    let listed = auth
        .mechanism_names()
        .into_iter()
        .map(StrBytes::from_static_str)
        .collect();
    let r = r.with_mechanisms(listed);
    let code = match unauthenticated {
        // Already authenticated (re-authentication is not served), or a second
        // handshake.
        None => codes::ILLEGAL_SASL_STATE,
        Some(s) if s.has_mechanism() => codes::ILLEGAL_SASL_STATE,
        Some(s) => {
            if s.handshake(&auth, req.mechanism.as_str()) {
                codes::NONE
            } else {
                codes::UNSUPPORTED_SASL_MECHANISM
            }
        }
    };
    let close = code != codes::NONE && unauthenticated.is_some();
    if close {
        ctx.metrics.sasl(false);
    }
    (r.with_error_code(code), close)
}

/// PLAIN password derivations ([`sasl::Derivation`]) run at once, over every
/// connection. Each is up to 16,384 PBKDF2 iterations (10-40 ms of a core) that
/// clients ask for before they are authenticated; the others wait here, on the
/// runtime, holding no thread, so that failed logins take at most this many
/// cores and none of the blocking threads that Fetch reads use.
const PLAIN_DERIVATIONS: usize = 1;

/// The derivations of every connection, taking turns by client address.
static DERIVATIONS: LazyLock<Turns> = LazyLock::new(|| Turns::new(PLAIN_DERIVATIONS));

/// Places for PLAIN derivations, given in turn by client address: at most one
/// login per address waits for a place, the others from that address waiting
/// behind it. A client that floods logins (closing each at once, so holding
/// nothing) took every turn before: a correct login from elsewhere waited for
/// the whole queue, until its authentication deadline (30 s). Now it waits for
/// at most one derivation per address with logins queued. An IPv6 address
/// counts by its /64, which one host often holds whole.
struct Turns {
    places: Semaphore,
    by_address: Mutex<HashMap<IpAddr, Arc<Semaphore>>>,
}

/// A place for one derivation; its address's turn passes on when it drops.
struct Turn<'a> {
    _place: SemaphorePermit<'a>,
    _address: OwnedSemaphorePermit,
}

impl Turns {
    fn new(places: usize) -> Turns {
        Turns {
            places: Semaphore::new(places),
            by_address: Mutex::new(HashMap::new()),
        }
    }

    /// Waits for `ip`'s turn, then for a place.
    async fn turn(&self, ip: IpAddr) -> Turn<'_> {
        let key = match ip {
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => IpAddr::V4(v4),
                None => {
                    let mut o = v6.octets();
                    o[8..].fill(0);
                    IpAddr::V6(o.into())
                }
            },
            v4 @ IpAddr::V4(_) => v4,
        };
        let address = {
            let mut map = self
                .by_address
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            // Addresses no login holds or waits for any more.
            if map.len() >= 1024 {
                map.retain(|_, s| Arc::strong_count(s) > 1);
            }
            Arc::clone(
                map.entry(key)
                    .or_insert_with(|| Arc::new(Semaphore::new(1))),
            )
        };
        let address = address.acquire_owned().await.expect("never closed");
        let place = self.places.acquire().await.expect("never closed");
        Turn {
            _place: place,
            _address: address,
        }
    }
}

/// The answer `frame` to a SaslAuthenticate (or raw token) that arrived at
/// `arrived`: at once, or, for a failure (`failed`), which then closes the
/// connection, not before `--connection-failed-authentication-delay-ms` after
/// its arrival, as Kafka's `connection.failed.authentication.delay.ms`
/// (KIP-306) delays it. A client that fails cannot try again at once, and a
/// wrong password for a known user, whose check may cost a PBKDF2 run, is
/// answered when an unknown user's is. The wait is a timer on the connection's
/// writer: it holds no thread.
pub(crate) fn answer(ctx: &Ctx, frame: Reply, failed: bool, arrived: Instant) -> Pending {
    let delay = Duration::from_millis(ctx.storage.config().server.failed_authentication_delay_ms);
    if !failed || delay.is_zero() {
        return Box::pin(async move { frame });
    }
    Box::pin(async move {
        tokio::time::sleep_until((arrived + delay).into()).await;
        frame
    })
}

/// Runs `d` on a blocking thread once one of the [`PLAIN_DERIVATIONS`] permits
/// is free; the permit goes with the thread's work, so a connection that goes
/// away meanwhile does not free it early.
async fn derive(
    ctx: &Arc<Ctx>,
    auth: Arc<sasl::Authenticator>,
    d: sasl::Derivation,
    peer: SocketAddr,
) -> sasl::Step {
    let permit = DERIVATIONS.turn(peer.ip()).await;
    // The users as they are now: a password deleted or changed (an
    // AlterUserScramCredentials, a SIGHUP reload) while this login waited
    // for a permit no longer logs in.
    let auth = ctx.security.sasl().unwrap_or(auth);
    let metrics_ctx = Arc::clone(ctx);
    let run = tokio::task::spawn_blocking(move || {
        let _permit = permit;
        let _running = metrics_ctx.metrics.plain_derivation();
        d.run(&auth)
    });
    run.await.unwrap_or_else(|e| {
        tracing::warn!(error = %e, "SASL password derivation failed");
        sasl::Step::Failed("authentication failed on the broker".into())
    })
}

/// SaslAuthenticate: one round of the chosen mechanism. A failure is answered
/// and then closes the connection (the `bool`), as Kafka does; see [`answer`]
/// for when. Every round is cheap but a PLAIN login that needs a derivation
/// ([`derive`]). Without SASL, or once authenticated, it is answered
/// ILLEGAL_SASL_STATE and the connection goes on, as Kafka answers it outside
/// its authenticator (as [`handshake`] answers a handshake then).
pub(crate) async fn authenticate(
    ctx: &Arc<Ctx>,
    req: &SaslAuthenticateRequest,
    unauthenticated: &mut Option<sasl::Session>,
    peer: SocketAddr,
) -> (SaslAuthenticateResponse, bool) {
    let r = SaslAuthenticateResponse::default();
    let (Some(auth), Some(session)) = (ctx.security.sasl(), unauthenticated.as_mut()) else {
        let r = r
            .with_error_code(codes::ILLEGAL_SASL_STATE)
            .with_error_message(Some(StrBytes::from_static_str(
                "no SASL authentication in progress on this connection",
            )));
        return (r, false);
    };
    let step = match session.authenticate(&auth, &req.auth_bytes) {
        sasl::Step::Derive(d) => derive(ctx, Arc::clone(&auth), d, peer).await,
        step => step,
    };
    match step {
        sasl::Step::Continue(bytes) => (r.with_auth_bytes(Bytes::from(bytes)), false),
        sasl::Step::Done { user, reply } => {
            tracing::debug!(%peer, %user, "authenticated");
            ctx.metrics.sasl(true);
            *unauthenticated = None;
            (r.with_auth_bytes(Bytes::from(reply)), false)
        }
        sasl::Step::Failed(why) => {
            crate::log_limit::limited!(info, %peer, reason = %why, "SASL authentication failed; closing connection");
            ctx.metrics.sasl(false);
            let code = if session.has_mechanism() {
                codes::SASL_AUTHENTICATION_FAILED
            } else {
                codes::ILLEGAL_SASL_STATE
            };
            let r = r
                .with_error_code(code)
                .with_error_message(Some(StrBytes::from_string(why)));
            (r, true)
        }
        sasl::Step::Derive(_) => unreachable!("a derivation gives a final step"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    /// A broker without SASL answers a SaslHandshake ILLEGAL_SASL_STATE, as
    /// Kafka answers one outside its authenticator, and keeps the connection:
    /// UNSUPPORTED_SASL_MECHANISM with an empty list sent the client looking
    /// for a mechanism to enable.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_handshake_without_sasl_is_an_illegal_state() {
        let dir = tempfile::tempdir().unwrap();
        let ctx = crate::server::tests::ctx_with(dir.path(), Config::default()).await;
        let req =
            SaslHandshakeRequest::default().with_mechanism(StrBytes::from_static_str("PLAIN"));
        let (r, close) = handshake(&ctx, &req, &mut None);
        assert_eq!((r.error_code, close), (codes::ILLEGAL_SASL_STATE, false));
        assert!(r.mechanisms.is_empty());
    }

    /// Logins flooded from one address took every turn for a derivation: a
    /// correct login from another waited behind the whole queue, until its
    /// authentication deadline. Turns now go by address: the other's login is
    /// next once the running derivation ends, and the flood's others wait
    /// behind it. An IPv6 /64 is one address.
    #[tokio::test(flavor = "current_thread")]
    async fn derivations_take_turns_by_client_address() {
        let turns: &'static Turns = Box::leak(Box::new(Turns::new(1)));
        let (done_tx, mut done) = tokio::sync::mpsc::unbounded_channel();
        let login = |who: &'static str, ip: &str| {
            let ip: IpAddr = ip.parse().unwrap();
            let done = done_tx.clone();
            tokio::spawn(async move {
                let turn = turns.turn(ip).await;
                done.send(who).unwrap();
                tokio::task::yield_now().await;
                drop(turn);
            })
        };
        let running = turns.turn("10.0.0.1".parse().unwrap()).await;
        let mut tasks = Vec::new();
        for _ in 0..5 {
            tasks.push(login("flood", "10.0.0.1"));
        }
        tasks.push(login("same /64", "2001:db8::1"));
        tasks.push(login("same /64", "2001:db8::2"));
        // Every login has queued (a current-thread runtime runs them here).
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
        tasks.push(login("other", "10.0.0.2"));
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
        drop(running);
        for t in tasks {
            t.await.unwrap();
        }
        done_tx.send("end").unwrap();
        let mut order = Vec::new();
        while let Some(who) = done.recv().await {
            if who == "end" {
                break;
            }
            order.push(who);
        }
        let other = order.iter().position(|&w| w == "other").unwrap();
        assert!(other <= 2, "the other address came {other}th: {order:?}");
        assert_eq!(order.len(), 8);
        // The second login of the /64 waited for the first's turn to end,
        // as the flood's did: another took a place between them.
        let v6: Vec<usize> = (0..order.len())
            .filter(|&i| order[i] == "same /64")
            .collect();
        assert!(v6[1] - v6[0] > 1, "{order:?}");
    }
}
