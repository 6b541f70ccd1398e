//! The `dead-letters` subcommands: what an operator does with what kept failing.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context as _;
use api::DeadLetterSource;

use crate::bus::{DeliveryOptions, LocalBus, Route};
use crate::embedded::{Db, EmbeddedActivityStore, EmbeddedDeadLetters};
use crate::stream::{BatchHandler, Processor};

/// A `dead-letters` subcommand.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeadLetterCommand {
    /// Every dead letter, one JSON line each.
    List {
        /// The data directory.
        data_dir: PathBuf,
    },
    /// One dead letter in full.
    Show {
        /// The data directory.
        data_dir: PathBuf,
        /// `stream` or `bus`.
        source: String,
        /// Its id.
        id: i64,
    },
    /// Send dead letters back (all of them without a source and id).
    Redrive {
        /// The data directory.
        data_dir: PathBuf,
        /// `stream` or `bus`.
        source: Option<String>,
        /// Its id.
        id: Option<i64>,
    },
}

fn source(name: &str) -> anyhow::Result<DeadLetterSource> {
    match name {
        "stream" => Ok(DeadLetterSource::Stream),
        "bus" => Ok(DeadLetterSource::Bus),
        other => anyhow::bail!("unknown dead-letter source {other:?}: use `stream` or `bus`"),
    }
}

fn line(letter: &api::DeadLetter) -> serde_json::Value {
    serde_json::json!({
        "source": if letter.source == DeadLetterSource::Stream { "stream" } else { "bus" },
        "id": letter.id,
        "target": letter.target,
        "eventId": letter.event_id,
        "reason": letter.reason,
        "attempts": letter.attempts,
        "failedAt": letter.failed_at,
    })
}

/// Runs a `dead-letters` subcommand against the store in its data directory (the server may be
/// running: the database takes both, and a running server picks redriven work up).
pub async fn dead_letters(command: DeadLetterCommand) -> anyhow::Result<()> {
    let data_dir = match &command {
        DeadLetterCommand::List { data_dir }
        | DeadLetterCommand::Show { data_dir, .. }
        | DeadLetterCommand::Redrive { data_dir, .. } => data_dir.clone(),
    };
    anyhow::ensure!(
        data_dir.join(crate::embedded::DB_FILE).exists(),
        "no store in {}",
        data_dir.display()
    );
    let db = Db::open(&data_dir)?;
    let letters = EmbeddedDeadLetters::new(Arc::clone(&db));
    let all = letters.all(usize::MAX >> 1).await?;
    match command {
        DeadLetterCommand::List { .. } => {
            for letter in &all {
                println!("{}", line(letter));
            }
            eprintln!("{} dead letters", all.len());
        }
        DeadLetterCommand::Show {
            source: name, id, ..
        } => {
            let wanted = source(&name)?;
            let letter = all
                .iter()
                .find(|l| l.source == wanted && l.id == id)
                .with_context(|| format!("no {name} dead letter {id}"))?;
            let mut shown = line(letter);
            shown["payload"] = serde_json::from_str(&letter.payload).unwrap_or_default();
            println!("{}", serde_json::to_string_pretty(&shown)?);
        }
        DeadLetterCommand::Redrive {
            source: name, id, ..
        } => {
            let wanted = match (name, id) {
                (Some(name), Some(id)) => Some((source(&name)?, id)),
                (None, None) => None,
                _ => anyhow::bail!("name both a source and an id, or neither (to redrive all)"),
            };
            let chosen: Vec<_> = all
                .iter()
                .filter(|l| wanted.is_none_or(|(s, id)| l.source == s && l.id == id))
                .collect();
            anyhow::ensure!(
                !chosen.is_empty() || wanted.is_none(),
                "no such dead letter"
            );
            let mut redriven = 0;
            for letter in chosen {
                if redrive(&db, &letters, letter).await? {
                    redriven += 1;
                }
            }
            eprintln!("{redriven} redriven");
        }
    }
    Ok(())
}

/// A bus dead letter goes back into its target's queue; a stream dead letter's record goes
/// through the processor again, publishing to this store's bus queues (a running server
/// delivers them). True when it went back.
async fn redrive(
    db: &Arc<Db>,
    letters: &EmbeddedDeadLetters,
    letter: &api::DeadLetter,
) -> anyhow::Result<bool> {
    match letter.source {
        DeadLetterSource::Bus => Ok(letters.redrive_bus(letter.id).await?),
        DeadLetterSource::Stream => {
            let Some(record) = letters.stream_record(letter.id).await? else {
                return Ok(false);
            };
            let activity: Arc<dyn consumers::ActivityStore> =
                Arc::new(EmbeddedActivityStore::new(Arc::clone(db)));
            let routes = Route::consumers(&activity);
            // The subscriptions' queue is left out: live subscribers are in the server's memory.
            let bus = Arc::new(LocalBus::new(
                Arc::clone(db),
                "redrive",
                routes,
                DeliveryOptions::default(),
            ));
            let event = serde_json::from_value(serde_json::json!({"Records": [record]}))?;
            let response = Processor(bus).handle(event).await;
            if response.batch_item_failures.is_empty() {
                letters.remove_stream(letter.id).await?;
                Ok(true)
            } else {
                eprintln!(
                    "stream record {} failed again; it stays a dead letter",
                    letter.id
                );
                Ok(false)
            }
        }
    }
}
