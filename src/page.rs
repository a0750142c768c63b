//! The live page at `/`, what a new user opens first: connect as a user (or with a token),
//! watch who is online, see messages arrive, send one. Everything is embedded in the binary:
//! plain HTML/JS/CSS from `assets/` and the official socket.io-client browser bundle, so the
//! page works offline and with the strict content security policy below.
//!
//! `POST /demo/send` is the page's send form. It goes through [`Gateway::send_direct`], the
//! code path of `SendDirect`, and exists only where trying things out is safe: with
//! `--auth none` on a loopback address, or when asked for with `--demo`.
//!
//! Both answer only requests whose `Host` this gateway is known by ([`AllowedHosts`]).

use std::{net::IpAddr, sync::Arc};

use axum::{
    body::Bytes,
    extract::{rejection::JsonRejection, DefaultBodyLimit, Request, State},
    http::{header, uri::Authority, HeaderMap, HeaderValue, StatusCode, Uri},
    middleware::{self, Next},
    response::{IntoResponse, Response},
    routing::{get, post},
    Json, Router,
};
use serde::{Deserialize, Deserializer};
use serde_json::json;

use crate::{
    config::AuthMode,
    gateway::{Gateway, SendOptions},
    order::Turn,
    wire,
};

const INDEX: &str = include_str!("../assets/index.html");
const PAGE_JS: &str = include_str!("../assets/page.js");
const PAGE_CSS: &str = include_str!("../assets/page.css");
/// socket.io-client 4.8.4, the version tests/e2e uses (MIT, assets/socket.io-client.LICENSE).
const SOCKET_IO_JS: &str = include_str!("../assets/socket.io.min.js");

/// Scripts and styles only from the gateway itself; sockets and the send form to it alone.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; \
                   img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// What the page needs to know about this gateway.
pub struct PageOptions {
    /// `--auth`: with `jwt` the page asks for a token and has no send form.
    pub auth: AuthMode,
    /// Whether `POST /demo/send` is served.
    pub demo_send: bool,
    /// `--max-message-bytes`: bounds the send form's request body too.
    pub max_message_bytes: usize,
    /// For the grpcurl example the page shows.
    pub grpc_port: u16,
    /// `--allowed-hosts`, with IP literals and `localhost`.
    pub allowed_hosts: AllowedHosts,
}

/// The `Host` values the page and `/demo/send` answer. DNS rebinding serves a page under the
/// attacker's name, then points that name at this gateway: the browser takes the gateway for
/// that page's origin (so the `Origin` check passes) but still sends `Host: <that name>`. An
/// IP literal or `localhost` cannot be rebound, so they always pass, with any port (a gateway
/// on `0.0.0.0` is reached at any of the machine's addresses, a port forward changes the
/// port); a name passes only when listed in `--allowed-hosts`.
#[derive(Clone, Default)]
pub struct AllowedHosts(Arc<[String]>);

impl AllowedHosts {
    /// IP literals, `localhost` and `names`.
    pub fn new(names: &[String]) -> Self {
        Self(names.iter().cloned().collect())
    }

    /// Whether `host`, a `Host` value (port optional), is one of them.
    fn allows(&self, host: &str) -> bool {
        let Ok(authority) = host.parse::<Authority>() else {
            return false;
        };
        let name = authority.host();
        let bracketed = name.strip_prefix('[').and_then(|n| n.strip_suffix(']'));
        !host.contains('@')
            && (bracketed.unwrap_or(name).parse::<IpAddr>().is_ok()
                || name.eq_ignore_ascii_case("localhost")
                || self.0.iter().any(|n| n.eq_ignore_ascii_case(name)))
    }
}

/// Answers 421 to a request whose `Host` is not one of `hosts`. Requests without a host (no
/// browser sends one) pass.
async fn check_host(hosts: AllowedHosts, req: Request, next: Next) -> Response {
    if let Some(host) = request_host(req.headers(), req.uri()) {
        if !hosts.allows(host) {
            tracing::debug!(
                host,
                "request for a host name not in --allowed-hosts refused"
            );
            return (
                StatusCode::MISDIRECTED_REQUEST,
                "this host name is not served here: add it to --allowed-hosts\n",
            )
                .into_response();
        }
    }
    next.run(req).await
}

/// The host a request names: HTTP/1.1 in `Host`, HTTP/2 in the request target. A `Host` that
/// is not text is the empty name, which nothing matches.
fn request_host<'a>(headers: &'a HeaderMap, uri: &'a Uri) -> Option<&'a str> {
    match headers.get(header::HOST) {
        Some(h) => Some(h.to_str().unwrap_or_default()),
        None => uri.authority().map(Authority::as_str),
    }
}

/// `/`, its assets and, when enabled, `/demo/send`, for the allowed hosts only.
pub fn router(gateway: Gateway, options: &PageOptions) -> Router {
    let auth = match options.auth {
        AuthMode::None => "none",
        AuthMode::Jwt => "jwt",
    };
    let index = Bytes::from(
        INDEX
            .replace("__AUTH__", auth)
            .replace("__SEND__", if options.demo_send { "on" } else { "off" })
            .replace("__GRPC_PORT__", &options.grpc_port.to_string()),
    );
    let mut router = Router::new()
        .route(
            "/",
            get(move || async move { asset("text/html; charset=utf-8", index) }),
        )
        .route(
            "/assets/page.js",
            get(|| async { asset("text/javascript; charset=utf-8", PAGE_JS.into()) }),
        )
        .route(
            "/assets/page.css",
            get(|| async { asset("text/css; charset=utf-8", PAGE_CSS.into()) }),
        )
        .route(
            "/assets/socket.io.min.js",
            get(|| async { asset("text/javascript; charset=utf-8", SOCKET_IO_JS.into()) }),
        );
    if options.demo_send {
        // JSON may be written more loosely than the canonical encoding the message limit
        // measures.
        let body_limit = options
            .max_message_bytes
            .saturating_mul(2)
            .saturating_add(4096);
        router = router.route(
            "/demo/send",
            post(send)
                .with_state(gateway)
                .layer(DefaultBodyLimit::max(body_limit)),
        );
    }
    let hosts = options.allowed_hosts.clone();
    router.layer(middleware::from_fn(move |req, next| {
        check_host(hosts.clone(), req, next)
    }))
}

fn asset(content_type: &'static str, body: Bytes) -> Response {
    (
        [
            (header::CONTENT_TYPE, HeaderValue::from_static(content_type)),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
            (
                header::CONTENT_SECURITY_POLICY,
                HeaderValue::from_static(CSP),
            ),
            (
                header::X_CONTENT_TYPE_OPTIONS,
                HeaderValue::from_static("nosniff"),
            ),
        ],
        body,
    )
        .into_response()
}

/// The body of `POST /demo/send`: the fields of `SendDirectRequest`, as grpcurl writes them.
#[derive(Deserialize)]
struct DemoSend {
    receiver_id: String,
    #[serde(default)]
    event: String,
    /// `null` is a message; only a missing field is "required".
    #[serde(default, deserialize_with = "present")]
    message: Option<serde_json::Value>,
}

fn present<'de, D: Deserializer<'de>>(d: D) -> Result<Option<serde_json::Value>, D::Error> {
    serde_json::Value::deserialize(d).map(Some)
}

fn error(status: StatusCode, message: impl Into<String>) -> Response {
    (status, Json(json!({ "error": message.into() }))).into_response()
}

async fn send(
    State(gateway): State<Gateway>,
    uri: Uri,
    headers: HeaderMap,
    body: Result<Json<DemoSend>, JsonRejection>,
) -> Response {
    if !same_origin(headers.get(header::ORIGIN), request_host(&headers, &uri)) {
        return error(
            StatusCode::FORBIDDEN,
            "demo send is only for the page this gateway serves",
        );
    }
    let req = match body {
        Ok(Json(req)) => req,
        Err(e) => return error(e.status(), e.body_text()),
    };
    let message = req.message.as_ref().map(wire::from_json);
    match gateway
        .send_direct(
            &req.receiver_id,
            &req.event,
            message.as_ref(),
            &SendOptions::default(),
            // One request per HTTP call: nothing to order against.
            Turn::default(),
        )
        .await
    {
        Ok(sent) => {
            // As grpcurl prints SendDirectResponse: `partial` only when true.
            let mut answer = json!({ "deliveredSockets": sent.delivered });
            if sent.partial {
                answer["partial"] = true.into();
            }
            Json(answer).into_response()
        }
        Err(e) => error(e.http_status(), e.to_string()),
    }
}

/// A browser request must come from a page of this very host: with `--cors-origins *` any web
/// site could otherwise make a visitor's browser send messages. Requests without `Origin`
/// (curl, scripts) are not from a browser page and pass.
fn same_origin(origin: Option<&HeaderValue>, host: Option<&str>) -> bool {
    let Some(origin) = origin else {
        return true;
    };
    let (Ok(origin), Some(host)) = (origin.to_str(), host) else {
        return false;
    };
    origin
        .strip_prefix("http://")
        .or_else(|| origin.strip_prefix("https://"))
        .is_some_and(|o| o.eq_ignore_ascii_case(host))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn demo_send_takes_browser_requests_only_from_its_own_origin() {
        let origin = |o: &'static str| Some(HeaderValue::from_static(o));
        let host = Some("127.0.0.1:5000");
        assert!(same_origin(None, host));
        assert!(same_origin(origin("http://127.0.0.1:5000").as_ref(), host));
        assert!(!same_origin(origin("http://evil.example").as_ref(), host));
        let lookalike = origin("http://127.0.0.1:5000.evil.example");
        assert!(!same_origin(lookalike.as_ref(), host));
        assert!(!same_origin(origin("http://127.0.0.1:5000").as_ref(), None));
    }

    #[test]
    fn ip_literals_localhost_and_listed_names_are_allowed_hosts_with_any_port() {
        let hosts = AllowedHosts::new(&["chat.example.com".into()]);
        for ok in [
            "127.0.0.1",
            "127.0.0.1:5000",
            "10.1.2.3:80",
            "[::1]:5000",
            "[::1]",
            "localhost:5000",
            "LocalHost",
            "chat.example.com",
            "Chat.Example.com:443",
        ] {
            assert!(hosts.allows(ok), "{ok}");
        }
        for bad in [
            "rebind.attacker.example:5000",
            "rebind.attacker.example",
            "chat.example.com.attacker.example",
            "localhost.attacker.example",
            "user@127.0.0.1",
            "127.0.0.1:5000/x",
            "",
            "::1",
        ] {
            assert!(!hosts.allows(bad), "{bad}");
        }
        assert!(!AllowedHosts::default().allows("chat.example.com"));
    }
}
