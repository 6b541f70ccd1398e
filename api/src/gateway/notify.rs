//! The notifier's fan-out: one bus event to every stored subscription.

use aws_lambda_events::eventbridge::EventBridgeEvent;
use serde_json::{Value, json};

use super::{
    ConnectionSender, ConnectionStore, GatewayError, MAX_SUBSCRIPTIONS_PER_EVENT, run_against,
};
use crate::ApiSchema;
use crate::events::BookEvent;

/// What one notification did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct Notified {
    /// `next` messages posted.
    pub sent: usize,
    /// Connections found gone and removed.
    pub gone: usize,
    /// Posts that failed otherwise (logged; the other subscribers were still served).
    pub failed: usize,
}

/// Runs every stored subscription against one bus event and posts the results. A gone
/// connection is removed; any other failure for one connection is logged and the rest are
/// still served.
pub async fn notify(
    event: EventBridgeEvent<Value>,
    schema: &ApiSchema,
    connections: &dyn ConnectionStore,
    api: &dyn ConnectionSender,
) -> Result<Notified, GatewayError> {
    let book_event = BookEvent::from_eventbridge(event)
        .map_err(|e| GatewayError::MalformedEvent(e.to_string()))?;
    let event_id = book_event.event_id.clone();

    let mut notified = Notified::default();
    let mut gone: Vec<String> = Vec::new();
    for subscription in connections
        .subscriptions(MAX_SUBSCRIPTIONS_PER_EVENT)
        .await?
    {
        if gone.contains(&subscription.connection_id) {
            continue;
        }
        for response in run_against(schema, subscription.request(), vec![book_event.clone()]).await
        {
            let message = json!({"type": "next", "id": subscription.id, "payload": response});
            match api.send(&subscription.connection_id, &message).await {
                Ok(()) => notified.sent += 1,
                Err(GatewayError::Gone) => {
                    gone.push(subscription.connection_id.clone());
                    break;
                }
                Err(error) => {
                    tracing::warn!(%event_id, connection_id = %subscription.connection_id, %error, "could not notify a subscriber");
                    notified.failed += 1;
                }
            }
        }
    }
    for connection_id in &gone {
        if let Err(error) = connections.close(connection_id).await {
            tracing::warn!(%connection_id, %error, "could not remove a gone connection");
        }
    }
    notified.gone = gone.len();
    tracing::info!(%event_id, sent = notified.sent, gone = notified.gone, failed = notified.failed, "subscribers notified");
    Ok(notified)
}
