//! SaslHandshake and SaslAuthenticate on the wire; the mechanisms themselves are
//! in [`crate::server::sasl`].

use std::{net::SocketAddr, sync::Arc};

use bytes::{BufMut, Bytes, BytesMut};
use kafka_protocol::{
    messages::{
        SaslAuthenticateRequest, SaslAuthenticateResponse, SaslHandshakeRequest,
        SaslHandshakeResponse,
    },
    protocol::StrBytes,
};

use crate::server::{codes, sasl, Ctx, Pending};

/// A raw SASL token after a SaslHandshake v0: answered as a raw token, or, on
/// failure, by closing the connection (what Kafka does; v0 has no error field).
pub(crate) async fn raw_token(
    ctx: &Arc<Ctx>,
    frame: &[u8],
    unauthenticated: &mut Option<sasl::Session>,
    peer: SocketAddr,
) -> (Pending, bool) {
    let req = SaslAuthenticateRequest::default().with_auth_bytes(Bytes::copy_from_slice(frame));
    let (r, close) = authenticate_blocking(ctx, req, unauthenticated, peer).await;
    if close {
        // Nothing to send: the connection just closes.
        return (Box::pin(async { None }), true);
    }
    let mut out = BytesMut::with_capacity(4 + r.auth_bytes.len());
    out.put_i32(i32::try_from(r.auth_bytes.len()).unwrap_or(i32::MAX));
    out.extend_from_slice(&r.auth_bytes);
    (Box::pin(async move { Some(out) }), false)
}

/// SaslHandshake: chooses the mechanism, lists the enabled ones.
pub(crate) fn handshake(
    ctx: &Ctx,
    req: &SaslHandshakeRequest,
    unauthenticated: &mut Option<sasl::Session>,
) -> SaslHandshakeResponse {
    let r = SaslHandshakeResponse::default();
    let Some(auth) = ctx.security.sasl() else {
        return r.with_error_code(codes::UNSUPPORTED_SASL_MECHANISM);
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
    r.with_error_code(code)
}

/// [`authenticate`] on a blocking thread. A PLAIN login of a user known only by
/// salted credentials derives them again (PBKDF2, 4,096 or more iterations, about
/// 10 ms), and unauthenticated clients must not be able to hold the runtime
/// threads that serve every other connection with it.
pub(crate) async fn authenticate_blocking(
    ctx: &Arc<Ctx>,
    req: SaslAuthenticateRequest,
    unauthenticated: &mut Option<sasl::Session>,
    peer: SocketAddr,
) -> (SaslAuthenticateResponse, bool) {
    let ctx = Arc::clone(ctx);
    let mut session = unauthenticated.take();
    let step = tokio::task::spawn_blocking(move || {
        let out = authenticate(&ctx, &req, &mut session, peer);
        (out, session)
    })
    .await;
    match step {
        Ok((out, session)) => {
            *unauthenticated = session;
            out
        }
        Err(e) => {
            tracing::warn!(%peer, error = %e, "SASL authentication task failed; closing connection");
            let r = SaslAuthenticateResponse::default()
                .with_error_code(codes::ILLEGAL_SASL_STATE)
                .with_error_message(Some(StrBytes::from_static_str(
                    "authentication failed on the broker",
                )));
            (r, true)
        }
    }
}

/// SaslAuthenticate: one round of the chosen mechanism. A failure is answered
/// and then closes the connection (the `bool`), as Kafka does.
pub(crate) fn authenticate(
    ctx: &Ctx,
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
        return (r, true);
    };
    match session.authenticate(&auth, &req.auth_bytes) {
        sasl::Step::Continue(bytes) => (r.with_auth_bytes(Bytes::from(bytes)), false),
        sasl::Step::Done { user, reply } => {
            tracing::debug!(%peer, %user, "authenticated");
            ctx.metrics.sasl(true);
            *unauthenticated = None;
            (r.with_auth_bytes(Bytes::from(reply)), false)
        }
        sasl::Step::Failed(why) => {
            tracing::info!(%peer, reason = %why, "SASL authentication failed; closing connection");
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
    }
}
