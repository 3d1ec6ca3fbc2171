//! `steward migrate-journal`: move the jobs that have not finished from an SQLite journal
//! into the PostgreSQL journal the configuration names.

use std::path::{Path, PathBuf};

use crate::config::{self, Backend, Environment};
use crate::error::Failure;
use crate::journal::postgres::{self, import};
use crate::journal::sqlite::export::Export;

use crate::stdout as out;

/// How many source ids a report names at most.
const NAMED: usize = 10;

pub fn run(config_path: &Path, from: Option<&Path>, dry_run: bool) -> Result<(), Failure> {
    let env = Environment::from_process();
    let config = config::load(config_path, &env).map_err(Failure::Config)?;
    let Backend::Postgres(pg) = &config.journal.backend else {
        return Err(Failure::Failed(format!(
            "{} keeps its jobs in SQLite ([journal] backend = \"sqlite\"): migrate-journal moves them into PostgreSQL, so set backend = \"postgres\" and url_file (see steward.toml(5)) first",
            config_path.display()
        )));
    };
    let source: PathBuf = match from {
        Some(p) => p.to_path_buf(),
        None => config.daemon.state_dir.join("journal.db"),
    };
    let mut export = Export::open(&source).map_err(Failure::Failed)?;
    let finished = export.finished().map_err(Failure::Failed)?;
    let url = pg.url.read(&env).map_err(Failure::Failed)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Failure::Failed(format!("cannot start the async runtime: {e}")))?;
    let mut client = runtime
        .block_on(postgres::connect(&url))
        .map_err(Failure::Failed)?;
    if !dry_run {
        runtime
            .block_on(postgres::schema::migrate(&mut client, &pg.schema))
            .map_err(|e| Failure::Failed(e.to_string()))?;
    }
    let mut total = Totals::default();
    loop {
        let chunk = export.next_chunk().map_err(Failure::Failed)?;
        if chunk.is_empty() {
            break;
        }
        total.seen += chunk.len();
        if dry_run {
            let ids: Vec<i64> = chunk.iter().map(|j| j.source_id).collect();
            total.already += runtime
                .block_on(import::already_moved(
                    &client,
                    &pg.schema,
                    &export.identity,
                    &ids,
                ))
                .map_err(Failure::Failed)?;
            continue;
        }
        let r = runtime
            .block_on(import::import(
                &mut client,
                &pg.schema,
                &export.identity,
                &chunk,
            ))
            .map_err(|e| {
                Failure::Failed(format!(
                    "{e}; {} jobs were moved before this (running the command again moves the rest)",
                    total.moved
                ))
            })?;
        total.moved += r.moved.len();
        total.already += r.already.len();
        total.key_taken.extend(r.key_taken);
    }
    out::line(&report(&source, &pg.schema, finished, &total, dry_run))
}

#[derive(Default)]
struct Totals {
    seen: usize,
    moved: usize,
    already: usize,
    key_taken: Vec<i64>,
}

fn report(source: &Path, schema: &str, finished: u64, t: &Totals, dry_run: bool) -> String {
    let mut s = if dry_run {
        format!(
            "{}: {} jobs would move to the PostgreSQL schema {schema} (a dry run: nothing was changed)",
            source.display(),
            t.seen - t.already
        )
    } else {
        format!(
            "{}: {} jobs moved to the PostgreSQL schema {schema}",
            source.display(),
            t.moved
        )
    };
    if t.already > 0 {
        s.push_str(&format!(
            "; {} were moved by an earlier run and are left as they are",
            t.already
        ));
    }
    if !t.key_taken.is_empty() {
        let named: Vec<String> = t
            .key_taken
            .iter()
            .take(NAMED)
            .map(|i| i.to_string())
            .collect();
        s.push_str(&format!(
            "; {} stayed behind because a queued or running job there has the same unique key (ids here: {}{})",
            t.key_taken.len(),
            named.join(", "),
            if t.key_taken.len() > NAMED { ", …" } else { "" }
        ));
    }
    s.push_str(&format!(
        "; {finished} finished jobs stay in {} (keep it, or a `steward backup` of it, for their history). The SQLite journal was not changed.",
        source.display()
    ));
    s
}
