//! `htg serve --watch`: the watcher's writes go the way an HTTP add does.
//!
//! Each file is embedded through the serving model's inference queue and inserted while the
//! write gate is held shared, so a model swap never lands a watched file in the index of the
//! other model. Files are recorded under their own path (nothing is copied to the uploads).

use std::sync::Arc;

use actix_web::web::{self, Bytes};

use super::error::ApiError;
use super::{service, State};
use crate::index::Record;
use crate::watch::{AddFailure, Sink};
use crate::SearchIndex as _;

/// The server as a [`Sink`]: owns a small runtime to drive the async service from the
/// watcher's thread.
pub struct ServerSink {
    state: web::Data<State>,
    runtime: tokio::runtime::Runtime,
}

impl ServerSink {
    /// A sink over `state`.
    pub fn new(state: web::Data<State>) -> std::io::Result<ServerSink> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        Ok(ServerSink { state, runtime })
    }
}

impl Sink for ServerSink {
    fn records(&self) -> Vec<(u64, Record)> {
        self.state.serving().index.records()
    }

    fn add(&self, files: Vec<(Record, Vec<u8>)>) -> Vec<Result<u64, AddFailure>> {
        let state = &self.state;
        self.runtime.block_on(async move {
            let _write = state.writes.read().await;
            let serving = state.serving();
            let mut out = Vec::with_capacity(files.len());
            let mut items = Vec::new();
            let mut slots = Vec::new();
            for (record, bytes) in files {
                match service::embed(state, &serving, vec![Bytes::from(bytes)]).await {
                    Ok(mut v) if v.len() == 1 => {
                        slots.push(out.len());
                        out.push(Ok(0));
                        items.push((record, v.remove(0)));
                    }
                    Ok(_) => out.push(Err(AddFailure::Write("the model gave no vector".into()))),
                    Err(e @ (ApiError::BadImage { .. } | ApiError::DecodeBudget { .. })) => {
                        out.push(Err(AddFailure::Image(e.to_string())))
                    }
                    Err(e) => out.push(Err(AddFailure::Write(e.to_string()))),
                }
            }
            if items.is_empty() {
                return out;
            }
            let index = Arc::clone(&serving.index);
            match index.insert_many(items) {
                Ok(ids) => {
                    for (slot, id) in slots.into_iter().zip(ids) {
                        out[slot] = Ok(id);
                    }
                }
                Err(e) => {
                    for slot in slots {
                        out[slot] = Err(AddFailure::Write(e.to_string()));
                    }
                }
            }
            out
        })
    }

    fn remove(&self, ids: &[u64]) -> Result<(), String> {
        let state = &self.state;
        self.runtime.block_on(async move {
            let _write = state.writes.read().await;
            state
                .serving()
                .index
                .remove_many(ids)
                .map(|_| ())
                .map_err(|e| e.to_string())
        })
    }
}
