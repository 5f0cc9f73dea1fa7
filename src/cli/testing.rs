//! What the CLI's unit tests share: settings on a prefix, a build walked
//! to a failed kickstart on the in-memory store, an action applied as the
//! CLI prints it, the text an `Out` buffered.

use super::terminal::Out;
use crate::app::Change;
use crate::config::{Config, Settings};
use crate::model::{Action, Actor, ErrorInfo, FailureKind, Update};
use crate::store::AnyStore;
use anyhow::Result;
use std::sync::Arc;

pub(crate) fn settings() -> Arc<Settings> {
    let source: crate::protocol::Source =
        serde_json::from_str(r#"{"local_dir": "/nowhere", "prefix": "fleet/"}"#).unwrap();
    Arc::new(Settings::from_source(&source).unwrap())
}

pub(crate) fn text(buf: &std::sync::Arc<std::sync::Mutex<Vec<u8>>>) -> String {
    String::from_utf8(std::mem::take(&mut *buf.lock().unwrap())).unwrap()
}

/// Applies a model action directly (no translation), printing as `act`.
pub(crate) async fn act_with(
    config: &Config,
    store: &AnyStore,
    action: Action,
    out: &Out,
) -> Result<()> {
    let update = Update::new(action, Actor::default(), crate::now());
    let described = update.action.describe();
    let applied = crate::app::record(
        config,
        store,
        &crate::app::SystemClock,
        Change::Apply(update),
        &out.notes,
    )
    .await?;
    out.applied(&described, &applied.doc, applied.written)
}

/// A build taken to a failed kickstart.
pub(crate) async fn walk(store: &AnyStore, id: &str, out: &Out) {
    let config = settings().for_build(id).unwrap();
    for action in [
        Action::Init { restart: false },
        Action::Complete(0),
        Action::Start(5),
        Action::Fail {
            state: 5,
            error: ErrorInfo::new("packer: ssh timeout".into(), FailureKind::Transient),
        },
    ] {
        act_with(&config, store, action, out).await.unwrap();
    }
}
