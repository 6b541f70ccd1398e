//! The `dead-letters` subcommands: what an operator does with what kept failing.

use std::sync::Arc;

use anyhow::Context as _;
use api::DeadLetterSource;

use crate::bus::{DeliveryOptions, LocalBus, Route};
use crate::embedded::{Db, EmbeddedActivityStore, EmbeddedDeadLetters};
use crate::stack::DataDir;
use crate::stream::{BatchHandler, Processor};

/// A `dead-letters` subcommand.
#[derive(Debug, Clone, PartialEq, Eq, clap::Subcommand)]
pub enum DeadLetterCommand {
    /// One line of JSON per dead letter, oldest first.
    List {
        /// The data directory.
        #[command(flatten)]
        data: DataDir,
    },
    /// One dead letter, in full (`stream <seq>` or `bus <id>`, as `list` names them).
    Show {
        /// The data directory.
        #[command(flatten)]
        data: DataDir,
        /// Where it was set aside.
        source: Source,
        /// The id `list` shows.
        id: i64,
    },
    /// Send dead letters back: a stream record to the processor, a bus event to its target's
    /// queue. With no source and id, every one of them.
    Redrive {
        /// The data directory.
        #[command(flatten)]
        data: DataDir,
        /// Where it was set aside.
        source: Option<Source>,
        /// The id `list` shows.
        id: Option<i64>,
    },
}

/// Where a dead letter was set aside, as the CLI names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Source {
    /// The stream reader's: a record the processor kept failing.
    Stream,
    /// The bus's: an event a consumer kept failing.
    Bus,
}

impl Source {
    /// Its name on the command line and in `list`'s lines.
    fn name(self) -> String {
        clap::ValueEnum::to_possible_value(&self)
            .map(|value| value.get_name().to_owned())
            .unwrap_or_default()
    }
}

impl From<DeadLetterSource> for Source {
    fn from(source: DeadLetterSource) -> Self {
        match source {
            DeadLetterSource::Stream => Self::Stream,
            DeadLetterSource::Bus => Self::Bus,
        }
    }
}

impl From<Source> for DeadLetterSource {
    fn from(source: Source) -> Self {
        match source {
            Source::Stream => Self::Stream,
            Source::Bus => Self::Bus,
        }
    }
}

fn line(letter: &api::DeadLetter) -> serde_json::Value {
    serde_json::json!({
        "source": Source::from(letter.source).name(),
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
        DeadLetterCommand::List { data }
        | DeadLetterCommand::Show { data, .. }
        | DeadLetterCommand::Redrive { data, .. } => data.data_dir.clone(),
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
        DeadLetterCommand::Show { source, id, .. } => {
            let wanted = DeadLetterSource::from(source);
            let letter = all
                .iter()
                .find(|l| l.source == wanted && l.id == id)
                .with_context(|| format!("no {} dead letter {id}", source.name()))?;
            let mut shown = line(letter);
            shown["payload"] = serde_json::from_str(&letter.payload).unwrap_or_default();
            println!("{}", serde_json::to_string_pretty(&shown)?);
        }
        DeadLetterCommand::Redrive { source, id, .. } => {
            let wanted = match (source, id) {
                (Some(source), Some(id)) => Some((DeadLetterSource::from(source), id)),
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
            let again = Arc::new(SetAsideAgain::default());
            let processor = Processor {
                publisher: bus,
                poison: again.clone(),
            };
            let response = processor.handle(event).await;
            if let Some(reason) = again.reason() {
                eprintln!(
                    "stream record {} still cannot be mapped ({reason}); it stays a dead letter",
                    letter.id
                );
                Ok(false)
            } else if response.batch_item_failures.is_empty() {
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

/// The poison records of a redrive: a record that still cannot be mapped stays the dead letter
/// it is (setting it aside again would replace it, and the redrive would then remove it).
#[derive(Debug, Default)]
struct SetAsideAgain(std::sync::Mutex<Option<String>>);

impl SetAsideAgain {
    fn reason(&self) -> Option<String> {
        self.0.lock().ok().and_then(|reason| reason.clone())
    }
}

#[async_trait::async_trait]
impl processor::PoisonRecords for SetAsideAgain {
    async fn set_aside(
        &self,
        _record: &aws_lambda_events::dynamodb::EventRecord,
        reason: &str,
    ) -> Result<(), processor::SetAsideError> {
        if let Ok(mut kept) = self.0.lock() {
            *kept = Some(reason.to_owned());
        }
        Ok(())
    }
}
