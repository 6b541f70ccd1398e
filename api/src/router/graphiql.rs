//! The GraphiQL page at `/`.

use axum::Extension;
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

pub(super) async fn graphiql(
    base: Option<Extension<BasePath>>,
    Extension(SubscriptionsUrl(subscriptions)): Extension<SubscriptionsUrl>,
) -> impl IntoResponse {
    let base = base
        .map(|Extension(BasePath(path))| path)
        .unwrap_or_default();
    let base = base.trim_end_matches('/');
    Html(graphiql_page(base, subscriptions.as_deref()))
}

/// The page for an API served under `base` ("" at the root), subscribing at `subscriptions`
/// (by default `<base>/graphql/ws`).
fn graphiql_page(base: &str, subscriptions: Option<&str>) -> String {
    let settings = serde_json::json!({
        "endpoint": format!("{base}/graphql"),
        "subscriptions": subscriptions.map_or_else(|| format!("{base}/graphql/ws"), str::to_owned),
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
        assert!(page.contains(r#"const settings = {"endpoint":"/prod/graphql","subscriptions":"/prod/graphql/ws"};"#), "{page}");
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
        let page = graphiql_page(
            "",
            Some("wss://abc.execute-api.us-east-1.amazonaws.com/live"),
        );
        assert!(
            page.contains(
                r#""subscriptions":"wss://abc.execute-api.us-east-1.amazonaws.com/live""#
            ),
            "{page}"
        );
    }
}
