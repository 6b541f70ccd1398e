//! Web origins (`scheme://host[:port]`), and the ones `--allow-origin` lets in besides this
//! server's own: pages there may open the WebSocket and the event stream, and read responses
//! (CORS).
//!
//! Browsers send `Origin` serialised (RFC 6454 §6.2): lowercase scheme and host, no default
//! port, no path. A configured origin is brought to that form once, so a handshake's or a
//! request's `Origin` is compared as text.

use axum::http::{HeaderMap, HeaderValue, header};

/// Brings an origin to the form browsers send, or says why it is not one: `http` or `https`,
/// a host, an optional port, nothing else (`*` and `null` are not origins one may list).
pub(crate) fn parse_origin(value: &str) -> Result<String, String> {
    let invalid = |why: &str| format!("{value:?} is not an origin (scheme://host[:port]): {why}");
    let (scheme, authority) = value
        .split_once("://")
        .ok_or_else(|| invalid("no scheme"))?;
    let scheme = scheme.to_ascii_lowercase();
    let default_port = match scheme.as_str() {
        "http" => "80",
        "https" => "443",
        _ => return Err(invalid("the scheme must be http or https")),
    };
    let authority = authority.strip_suffix('/').unwrap_or(authority);
    if authority.is_empty() {
        return Err(invalid("no host"));
    }
    if authority.contains(['/', '?', '#', '@', '*', ' ']) {
        return Err(invalid("only a host and a port may follow the scheme"));
    }
    let authority = authority.to_ascii_lowercase();
    // A port follows the last ':' unless that ':' is inside an IPv6 literal (`[::1]`).
    let (host, port) = match authority.rsplit_once(':') {
        Some((host, port)) if !port.contains(']') => (host, Some(port)),
        _ => (authority.as_str(), None),
    };
    if host.is_empty() {
        return Err(invalid("no host"));
    }
    match port {
        None => Ok(format!("{scheme}://{host}")),
        Some(port) if port.parse::<u16>().is_err() => Err(invalid("the port is not a number")),
        Some(port) if port == default_port => Ok(format!("{scheme}://{host}")),
        Some(port) => Ok(format!("{scheme}://{host}:{port}")),
    }
}

/// The origins, besides this server's own, whose pages may use the API (`--allow-origin`).
#[derive(Debug, Clone, Default)]
pub(super) struct AllowedOrigins(Vec<String>);

impl AllowedOrigins {
    /// The configured origins (already in [`parse_origin`]'s form); ones that do not parse are
    /// left out.
    pub(super) fn new(origins: &[String]) -> Self {
        Self(
            origins
                .iter()
                .filter_map(|origin| parse_origin(origin).ok())
                .collect(),
        )
    }

    /// Whether any are configured (CORS is off otherwise).
    pub(super) fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Whether a request's `Origin` header names a configured origin.
    pub(super) fn lists(&self, origin: &str) -> bool {
        parse_origin(origin).is_ok_and(|origin| self.0.contains(&origin))
    }

    /// The `Origin` of a request that a page elsewhere made: neither this server's own (the
    /// request's `Host`) nor a configured one. A request without `Origin` is no page's (clients
    /// that are not browsers send none) and is let in.
    pub(super) fn refuses<'h>(&self, headers: &'h HeaderMap) -> Option<&'h HeaderValue> {
        let origin = headers.get(header::ORIGIN)?;
        let host = headers.get(header::HOST).and_then(|h| h.to_str().ok());
        let text = origin.to_str().unwrap_or_default();
        (!same_origin(text, host) && !self.lists(text)).then_some(origin)
    }
}

/// Whether an `Origin` (`scheme://host[:port]`) names the server at `host` (the request's
/// `Host`): the page that made the request was served here. `null` (a sandboxed or local file
/// page) is another origin.
fn same_origin(origin: &str, host: Option<&str>) -> bool {
    let Some(host) = host else {
        return false;
    };
    let Some((scheme, authority)) = origin.split_once("://") else {
        return false;
    };
    let default_port = match scheme {
        "http" => "80",
        "https" => "443",
        _ => return false,
    };
    let with_port = |authority: &str| {
        let authority = authority.trim_end_matches('/').to_ascii_lowercase();
        if authority
            .rsplit_once(':')
            .is_some_and(|(_, port)| port.chars().all(|c| c.is_ascii_digit()))
            && !authority.ends_with(']')
        {
            authority
        } else {
            format!("{authority}:{default_port}")
        }
    };
    with_port(authority) == with_port(host)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origins_are_brought_to_the_form_browsers_send() {
        assert_eq!(
            parse_origin("http://localhost:5173").as_deref(),
            Ok("http://localhost:5173")
        );
        assert_eq!(
            parse_origin("HTTPS://App.Example:443/").as_deref(),
            Ok("https://app.example")
        );
        assert_eq!(
            parse_origin("http://[::1]:3000").as_deref(),
            Ok("http://[::1]:3000")
        );
        assert_eq!(parse_origin("http://[::1]").as_deref(), Ok("http://[::1]"));
        for refused in [
            "*",
            "null",
            "localhost:3000",
            "ftp://example.com",
            "http://",
            "http://example.com/app",
            "http://example.com:http",
            "http://example.com:99999",
            "http://user@example.com",
            "http://*.example.com",
            "https://:443",
        ] {
            assert!(parse_origin(refused).is_err(), "{refused}");
        }
    }

    #[test]
    fn only_this_servers_own_pages_are_this_origin() {
        let host = Some("127.0.0.1:8000");
        assert!(same_origin("http://127.0.0.1:8000", host));
        assert!(same_origin("http://localhost:8000", Some("LOCALHOST:8000")));
        assert!(same_origin("http://example.com", Some("example.com:80")));
        assert!(!same_origin("http://evil.example", host));
        assert!(!same_origin("http://127.0.0.1:9999", host));
        // (The scheme only gives the default port: `Host` carries none, and behind a TLS
        // proxy the page's https origin names this very server.)
        assert!(same_origin("https://example.com", Some("example.com")));
        assert!(same_origin("https://example.com", Some("example.com:443")));
        assert!(!same_origin("null", host));
        assert!(!same_origin("http://127.0.0.1:8000", None));
    }

    #[test]
    fn requests_from_pages_elsewhere_are_refused_and_others_let_in() {
        let allowed = AllowedOrigins::new(&["https://app.example".to_owned()]);
        let headers = |origin: Option<&'static str>| {
            let mut headers = HeaderMap::new();
            headers.insert(header::HOST, HeaderValue::from_static("127.0.0.1:8000"));
            if let Some(origin) = origin {
                headers.insert(header::ORIGIN, HeaderValue::from_static(origin));
            }
            headers
        };
        assert_eq!(allowed.refuses(&headers(None)), None, "no page's request");
        assert_eq!(
            allowed.refuses(&headers(Some("http://127.0.0.1:8000"))),
            None
        );
        assert_eq!(allowed.refuses(&headers(Some("https://app.example"))), None);
        assert_eq!(
            allowed.refuses(&headers(Some("http://evil.example"))),
            Some(&HeaderValue::from_static("http://evil.example"))
        );
    }

    #[test]
    fn only_listed_origins_are_listed() {
        let allowed = AllowedOrigins::new(&["https://app.example".to_owned()]);
        assert!(allowed.lists("https://app.example"));
        assert!(allowed.lists("https://app.example:443"));
        assert!(!allowed.lists("http://app.example"));
        assert!(!allowed.lists("https://app.example.evil"));
        assert!(!allowed.lists("null"));
        assert!(!allowed.lists(""));
        assert!(AllowedOrigins::new(&[]).is_empty());
    }
}
