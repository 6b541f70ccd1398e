//! The GraphiQL page at `/`.

use axum::Extension;
use axum::response::{Html, IntoResponse};

/// The path prefix the API is served under, when it is not the root: behind an API Gateway
/// stage, say, which the Lambda adds as a request extension so GraphiQL's links point home.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BasePath(pub String);

/// The GraphiQL page: our own, small, with its assets pinned (they load from unpkg.com).
const GRAPHIQL: &str = include_str!("graphiql.html");

pub(super) async fn graphiql(base: Option<Extension<BasePath>>) -> impl IntoResponse {
    let base = base
        .map(|Extension(BasePath(path))| path)
        .unwrap_or_default();
    let base = base.trim_end_matches('/');
    Html(graphiql_page(base))
}

/// The page for an API served under `base` ("" at the root).
fn graphiql_page(base: &str) -> String {
    let settings = serde_json::json!({
        "endpoint": format!("{base}/graphql"),
        "subscriptions": format!("{base}/graphql/ws"),
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
        let page = graphiql_page("/prod");
        assert!(page.contains(r#"const settings = {"endpoint":"/prod/graphql","subscriptions":"/prod/graphql/ws"};"#), "{page}");
        assert!(!page.contains("__SETTINGS__"));

        let page = graphiql_page("/</script><script>alert(1)//");
        assert_eq!(
            page.matches("</script>").count(),
            GRAPHIQL.matches("</script>").count()
        );
        assert!(
            page.contains(r"\u003c/script>\u003cscript>alert(1)//"),
            "{page}"
        );
    }
}
