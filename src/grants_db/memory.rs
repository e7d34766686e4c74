//! Grants held in memory: a [`GrantReader`] for tests of the cache (and of
//! anything over it) without a database. Every write bumps one revision
//! counter, as the database's revision row does; [`MemoryGrants::restore`]
//! takes the history elsewhere, as a restore or a failover does.

use std::collections::HashMap;
use std::sync::atomic::AtomicU64;

use super::cache::{GrantReader, ReadAt, ReadFuture};
use super::*;

/// Grants by lookup, one revision counter and identity, and a count of
/// reads (each one snapshot).
#[derive(Debug)]
pub struct MemoryGrants {
    state: std::sync::Mutex<State>,
    reads: AtomicU64,
}

#[derive(Debug)]
struct State {
    database: String,
    revision: i64,
    grants: HashMap<Lookup, Vec<Box<str>>>,
}

impl MemoryGrants {
    /// No grants, at revision 0 of the database identity `database`.
    pub fn new(database: &str) -> Self {
        MemoryGrants {
            state: std::sync::Mutex::new(State {
                database: database.to_owned(),
                revision: 0,
                grants: HashMap::new(),
            }),
            reads: AtomicU64::new(0),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Gives `role` on `lookup`'s key to its holder; the write's revision.
    pub fn grant(&self, lookup: &Lookup, role: &str) -> i64 {
        let mut state = self.state();
        state
            .grants
            .entry(lookup.clone())
            .or_default()
            .push(role.into());
        state.revision += 1;
        state.revision
    }

    /// Takes `role` on `lookup`'s key back; the write's revision.
    pub fn revoke(&self, lookup: &Lookup, role: &str) -> i64 {
        let mut state = self.state();
        if let Some(roles) = state.grants.get_mut(lookup) {
            roles.retain(|r| &**r != role);
        }
        state.revision += 1;
        state.revision
    }

    /// Another history: identity `database` at `revision`, with `grants`
    /// as they stand there.
    pub fn restore(&self, database: &str, revision: i64, grants: Vec<(Lookup, &str)>) {
        let mut state = self.state();
        state.database = database.to_owned();
        state.revision = revision;
        state.grants.clear();
        for (lookup, role) in grants {
            state.grants.entry(lookup).or_default().push(role.into());
        }
    }

    /// The revision and identity now.
    pub fn head(&self) -> (String, i64) {
        let state = self.state();
        (state.database.clone(), state.revision)
    }

    /// Reads answered so far.
    pub fn reads(&self) -> u64 {
        self.reads.load(Ordering::SeqCst)
    }
}

impl GrantReader for MemoryGrants {
    fn read<'a>(&'a self, lookups: &'a [Lookup]) -> ReadFuture<'a> {
        self.reads.fetch_add(1, Ordering::SeqCst);
        let state = self.state();
        let read = ReadAt {
            revision: state.revision,
            database: state.database.clone(),
            names: lookups
                .iter()
                .map(|l| state.grants.get(l).cloned().unwrap_or_default().into())
                .collect(),
        };
        Box::pin(std::future::ready(Ok(read)))
    }
}
