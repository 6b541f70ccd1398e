//! The GraphiQL page at `/`, with the headers that keep it to its own code: a
//! Content-Security-Policy that lets scripts come only from the pinned unpkg.com files (each
//! also carries a Subresource Integrity hash, so a changed file is not run) and the page's one
//! inline script (by its hash), and lets the page talk only to this API.

use axum::Extension;
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::{Html, IntoResponse};

/// The path prefix the API is served under, when it is not the root: behind an API Gateway
/// stage, say, which the Lambda adds as a request extension so GraphiQL's links point home.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BasePath(pub String);

/// Where the page opens subscriptions, when not at `<base>/graphql/ws`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct SubscriptionsUrl(pub Option<String>);

/// The GraphiQL page: our own, small, with its assets pinned (they load from unpkg.com).
const GRAPHIQL: &str = include_str!("graphiql.html");

/// The scripts the page loads from unpkg.com, exactly (the page gives each its SRI hash).
const SCRIPTS: [&str; 3] = [
    "https://unpkg.com/react@18.3.1/umd/react.production.min.js",
    "https://unpkg.com/react-dom@18.3.1/umd/react-dom.production.min.js",
    "https://unpkg.com/graphiql@4.1.2/graphiql.min.js",
];
/// The style sheet it loads from there.
const STYLE: &str = "https://unpkg.com/graphiql@4.1.2/graphiql.min.css";
/// The CSP hash of the page's inline script (e2e/graphiql.test.js checks it against the page,
/// and Chromium refuses the script when it is stale).
const INLINE_SCRIPT: &str = "'sha256-xPMVmIXoawx7dN0oTjQJ/RT0/W+t9/b6Y3AKYVd1LyM='";

pub(super) async fn graphiql(
    base: Option<Extension<BasePath>>,
    Extension(SubscriptionsUrl(subscriptions)): Extension<SubscriptionsUrl>,
    headers: HeaderMap,
) -> impl IntoResponse {
    let base = base
        .map(|Extension(BasePath(path))| path)
        .unwrap_or_default();
    let base = base.trim_end_matches('/');
    let host = headers
        .get(header::HOST)
        .and_then(|host| host.to_str().ok());
    let policy = content_security_policy(host, subscriptions.as_deref());
    (
        [
            (header::CONTENT_SECURITY_POLICY, policy),
            (
                header::X_CONTENT_TYPE_OPTIONS,
                HeaderValue::from_static("nosniff"),
            ),
            (
                header::REFERRER_POLICY,
                HeaderValue::from_static("no-referrer"),
            ),
        ],
        Html(graphiql_page(base, subscriptions.as_deref())),
    )
}

/// The page's policy: nothing but the pinned files, its inline script, its styles (GraphiQL's
/// components add style elements; styles cannot run code), the `data:` fonts and images of
/// GraphiQL's style sheet, and connections to this server (`'self'`; its WebSocket under the
/// request's `Host`, or the `subscriptions` URL). Never framed, no `<base>`, no plugins.
fn content_security_policy(host: Option<&str>, subscriptions: Option<&str>) -> HeaderValue {
    let mut connect = vec!["'self'".to_owned()];
    match subscriptions {
        Some(url) if is_source(url) => connect.push(url.to_owned()),
        Some(_) => {}
        None => {
            if let Some(host) = host.filter(|host| is_source(host)) {
                connect.extend([format!("ws://{host}"), format!("wss://{host}")]);
            }
        }
    }
    let policy = format!(
        "default-src 'none'; script-src {scripts} {INLINE_SCRIPT}; \
         style-src {STYLE} 'unsafe-inline'; font-src data:; img-src 'self' data:; \
         connect-src {connect}; frame-ancestors 'none'; base-uri 'none'; object-src 'none'; \
         form-action 'none'",
        scripts = SCRIPTS.join(" "),
        connect = connect.join(" "),
    );
    HeaderValue::from_str(&policy)
        .unwrap_or_else(|_| HeaderValue::from_static("default-src 'none'"))
}

/// Whether `text` can stand in a policy as one source: nothing that would end it or start
/// another (`;`, `,`, spaces, quotes).
fn is_source(text: &str) -> bool {
    !text.is_empty()
        && text
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-._~:/[]%@!$&()+=?".contains(c))
}

/// The page for an API served under `base` ("" at the root), subscribing at `subscriptions`
/// (by default `<base>/graphql/ws`). The settings are a JSON data block, not a script, so the
/// inline script stays the same and its hash holds.
fn graphiql_page(base: &str, subscriptions: Option<&str>) -> String {
    let settings = serde_json::json!({
        "endpoint": format!("{base}/graphql"),
        "subscriptions": subscriptions.map_or_else(|| format!("{base}/graphql/ws"), str::to_owned),
        // A WebSocket API elsewhere (AWS) authorizes the socket when it opens, from `?token=`.
        "tokenInQuery": subscriptions.is_some(),
    });
    // JSON inside a <script>: no "</script>" (or "<!--") can close it early.
    let settings = settings.to_string().replace('<', "\\u003c");
    GRAPHIQL.replace("__SETTINGS__", &settings)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_graphiql_page_points_at_its_base_path_and_cannot_be_broken_out_of() {
        let page = graphiql_page("/prod", None);
        assert!(
            page.contains(
                r#">{"endpoint":"/prod/graphql","subscriptions":"/prod/graphql/ws","tokenInQuery":false}</script>"#
            ),
            "{page}"
        );
        assert!(!page.contains("__SETTINGS__"));

        let page = graphiql_page("/</script><script>alert(1)//", None);
        assert_eq!(
            page.matches("</script>").count(),
            GRAPHIQL.matches("</script>").count()
        );
        assert!(
            page.contains(r"\u003c/script>\u003cscript>alert(1)//"),
            "{page}"
        );
    }

    #[test]
    fn on_aws_the_page_subscribes_through_the_websocket_api() {
        let url = "wss://abc.execute-api.us-east-1.amazonaws.com/live";
        let page = graphiql_page("", Some(url));
        assert!(
            page.contains(&format!(r#""subscriptions":"{url}","tokenInQuery":true"#)),
            "the page puts its credential in the WebSocket API's URL: {page}"
        );
        let policy = content_security_policy(Some("abc.example"), Some(url));
        let policy = policy.to_str().unwrap();
        assert!(
            policy.contains(&format!("connect-src 'self' {url};")),
            "{policy}"
        );
    }

    /// Every file the page loads from unpkg.com has an integrity hash, is fetched without
    /// credentials, and is the one the policy names; the e2e test checks the hashes against
    /// the files themselves.
    #[test]
    fn every_pinned_file_has_its_integrity_hash_and_the_policy_names_it() {
        let tags: Vec<&str> = GRAPHIQL
            .split('<')
            .filter(|tag| tag.contains("https://unpkg.com/"))
            .filter(|tag| tag.starts_with("script") || tag.starts_with("link"))
            .collect();
        assert_eq!(tags.len(), SCRIPTS.len() + 1, "{tags:?}");
        for tag in tags {
            assert!(tag.contains(r#"integrity="sha384-"#), "{tag}");
            assert!(tag.contains(r#"crossorigin="anonymous""#), "{tag}");
            let named = SCRIPTS.iter().chain([&STYLE]).any(|url| {
                tag.contains(&format!(r#"src="{url}""#))
                    || tag.contains(&format!(r#"href="{url}""#))
            });
            assert!(named, "{tag}");
        }
    }

    #[test]
    fn the_policy_keeps_the_page_to_its_own_code_and_this_server() {
        let policy = content_security_policy(Some("127.0.0.1:8000"), None);
        let policy = policy.to_str().unwrap();
        for directive in [
            "default-src 'none'",
            "connect-src 'self' ws://127.0.0.1:8000 wss://127.0.0.1:8000;",
            "frame-ancestors 'none'",
            "base-uri 'none'",
            "object-src 'none'",
        ] {
            assert!(policy.contains(directive), "{directive}: {policy}");
        }
        let scripts = policy
            .split(';')
            .find(|d| d.trim().starts_with("script-src"))
            .unwrap();
        assert!(!scripts.contains("unsafe"), "{scripts}");
        assert!(
            !scripts.contains("https://unpkg.com "),
            "only the pinned files: {scripts}"
        );

        // A Host that would add a directive of its own is left out.
        let policy = content_security_policy(Some("x; script-src *"), None);
        assert!(
            policy.to_str().unwrap().contains("connect-src 'self';"),
            "{policy:?}"
        );
    }
}
