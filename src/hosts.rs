//! DNS rebinding, closed: a page on an attacker's domain can point that domain at 127.0.0.1
//! once it has loaded, and its requests then reach this server as same-origin ones (the Origin
//! and the Host both name the attacker's domain, so the WebSocket's origin check and CORS let
//! them through). A server listening on a loopback address only answers requests whose `Host`
//! is a loopback name or address — `localhost` (and `*.localhost`, which browsers resolve to
//! loopback themselves, RFC 6761), `127.x.x.x`, `[::1]` — or the host of an origin given with
//! `--allow-origin`; any other gets 421 Misdirected Request. A request without a `Host` (not a
//! browser's) passes. Listening elsewhere (`--host 0.0.0.0`) means being reached by other
//! names on purpose, and the check is off.

use std::net::IpAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::Request;
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};

/// `router`, answering only requests for a loopback host or one of `allowed_origins`' hosts.
pub fn only_local_hosts(router: Router, allowed_origins: &[String]) -> Router {
    let allowed: Arc<Vec<String>> = Arc::new(
        allowed_origins
            .iter()
            .filter_map(|origin| origin.split_once("://").map(|(_, host)| host))
            .map(|host| without_port(host).to_ascii_lowercase())
            .collect(),
    );
    router.layer(middleware::from_fn(move |request: Request, next: Next| {
        let allowed = Arc::clone(&allowed);
        async move {
            let host = request
                .headers()
                .get(header::HOST)
                .map(|host| host.to_str().map(str::to_owned));
            match host {
                None => next.run(request).await,
                Some(Ok(host))
                    if is_local(&host)
                        || allowed.contains(&without_port(&host).to_ascii_lowercase()) =>
                {
                    next.run(request).await
                }
                Some(_) => refuse(),
            }
        }
    }))
}

fn refuse() -> Response {
    let body = serde_json::json!({"errors": [{
        "message": "this server answers only for localhost and the hosts of --allow-origin",
        "extensions": {"code": "BAD_REQUEST"}
    }]});
    (
        StatusCode::MISDIRECTED_REQUEST,
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}

/// `host[:port]` without the port (`[::1]:8000` → `[::1]`).
fn without_port(host: &str) -> &str {
    if host.starts_with('[') {
        return host
            .split_once(']')
            .map_or(host, |(address, _)| &host[..=address.len()]);
    }
    host.rsplit_once(':').map_or(host, |(name, _)| name)
}

/// Whether `host` (a `Host` header) names this machine's loopback interface.
fn is_local(host: &str) -> bool {
    let name = without_port(host).to_ascii_lowercase();
    let name = name.trim_end_matches('.');
    if name == "localhost" || name.ends_with(".localhost") {
        return true;
    }
    let address = name.trim_start_matches('[').trim_end_matches(']');
    address.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_names_and_addresses_are_local_and_others_are_not() {
        for host in [
            "localhost",
            "localhost:8000",
            "LOCALHOST.",
            "app.localhost:3000",
            "127.0.0.1:8000",
            "127.1.2.3",
            "[::1]:8000",
            "[::1]",
        ] {
            assert!(is_local(host), "{host}");
        }
        for host in [
            "attacker.example:8000",
            "localhost.attacker.example",
            "127.0.0.1.attacker.example",
            "10.0.0.1:8000",
            "[::2]:8000",
            "",
        ] {
            assert!(!is_local(host), "{host}");
        }
    }

    #[test]
    fn ports_are_taken_off_hosts_and_addresses() {
        assert_eq!(without_port("example.com:8000"), "example.com");
        assert_eq!(without_port("example.com"), "example.com");
        assert_eq!(without_port("[::1]:8000"), "[::1]");
        assert_eq!(without_port("[::1]"), "[::1]");
    }
}
