//! The PostgreSQL journal's schema, versioned in `<schema>.meta`, and its migrations.
//!
//! Every table lives in one schema of the operator's choosing (`steward` by default).
//! Migrations run in one transaction under an advisory lock on the schema's name, so
//! that several daemons starting together apply each exactly once, and a daemon older
//! than the schema refuses to touch it.
//!
//! Hot rows are narrow: `jobs` holds what dispatch needs, payloads and results live in
//! `job_data`. Jobs due later (`scheduled`) wait apart from due ones (`queued`), so a
//! claim never walks past future rows.

use tokio_postgres::Client;

/// Each entry upgrades the schema from version `index` to `index + 1`; `{s}` is the
/// schema's (quoted) name.
const MIGRATIONS: &[&str] = &[
    // 1: jobs, their data and attempts; hosts and their leases; submits from SQL.
    r#"
    CREATE TABLE {s}.jobs (
        id               bigserial PRIMARY KEY,
        queue            text        NOT NULL,
        state            text        NOT NULL,
        priority         bigint      NOT NULL DEFAULT 0,
        run_at           timestamptz NOT NULL,
        created_at       timestamptz NOT NULL DEFAULT now(),
        updated_at       timestamptz NOT NULL DEFAULT now(),
        finished_at      timestamptz,
        attempts         integer     NOT NULL DEFAULT 0,
        tries            integer     NOT NULL DEFAULT 0,
        crashes          integer     NOT NULL DEFAULT 0,
        interruptions    integer     NOT NULL DEFAULT 0,
        max_attempts     integer     NOT NULL,
        timeout_ms       bigint,
        unique_key       text,
        lease_token      bigint      NOT NULL DEFAULT 0,
        lease_host       text,
        lease_run        text,
        worker           text,
        claimed_at       timestamptz,
        error            text,
        progress         double precision,
        progress_message text,
        CONSTRAINT jobs_state CHECK (state IN
            ('queued', 'scheduled', 'running', 'succeeded', 'failed', 'cancelled'))
    ) WITH (fillfactor = 80);
    CREATE INDEX jobs_dispatch ON {s}.jobs (queue, priority DESC, run_at, id)
        WHERE state = 'queued';
    CREATE INDEX jobs_scheduled ON {s}.jobs (run_at) WHERE state = 'scheduled';
    CREATE INDEX jobs_running ON {s}.jobs (lease_run) WHERE state = 'running';
    CREATE UNIQUE INDEX jobs_unique ON {s}.jobs (queue, unique_key)
        WHERE unique_key IS NOT NULL AND state IN ('queued', 'scheduled', 'running');
    CREATE INDEX jobs_finished ON {s}.jobs (queue, state, finished_at)
        WHERE finished_at IS NOT NULL;
    CREATE TABLE {s}.job_data (
        job_id  bigint PRIMARY KEY REFERENCES {s}.jobs (id) ON DELETE CASCADE,
        payload jsonb NOT NULL,
        result  jsonb
    );
    CREATE TABLE {s}.attempts (
        job_id      bigint  NOT NULL REFERENCES {s}.jobs (id) ON DELETE CASCADE,
        attempt     integer NOT NULL,
        host        text,
        worker      text,
        pid         integer,
        started_at  timestamptz,
        ended_at    timestamptz,
        outcome     text,
        error       text,
        stdout_tail text,
        stderr_tail text,
        PRIMARY KEY (job_id, attempt)
    );
    CREATE TABLE {s}.hosts (
        run_id           text PRIMARY KEY,
        host             text        NOT NULL,
        boot_id          text,
        pid              integer,
        version          text,
        started_at       timestamptz NOT NULL DEFAULT now(),
        lease_expires_at timestamptz NOT NULL
    );
    CREATE INDEX hosts_host ON {s}.hosts (host);
    CREATE FUNCTION {s}.submit(
        queue        text,
        payload      jsonb,
        priority     bigint      DEFAULT 0,
        run_at       timestamptz DEFAULT now(),
        max_attempts integer     DEFAULT 3,
        unique_key   text        DEFAULT NULL
    ) RETURNS bigint
    LANGUAGE plpgsql
    SET search_path = pg_catalog, pg_temp
    AS $fn$
    #variable_conflict use_column
    DECLARE
        job bigint;
    BEGIN
        IF submit.queue IS NULL OR submit.queue !~ '^[A-Za-z0-9_-]{1,64}$' THEN
            RAISE EXCEPTION 'steward.submit: queue must be 1 to 64 letters, digits, - or _, not %', quote_nullable(submit.queue)
                USING ERRCODE = '22023';
        END IF;
        IF submit.payload IS NULL THEN
            RAISE EXCEPTION 'steward.submit: payload must be a JSON value, not NULL'
                USING ERRCODE = '22023';
        END IF;
        IF pg_column_size(submit.payload) > 64 * 1024 * 1024 THEN
            RAISE EXCEPTION 'steward.submit: payload of % bytes is over 64 MiB', pg_column_size(submit.payload)
                USING ERRCODE = '54000';
        END IF;
        IF submit.max_attempts IS NULL OR submit.max_attempts < 1 OR submit.max_attempts > {max_attempts} THEN
            RAISE EXCEPTION 'steward.submit: max_attempts must be 1 to {max_attempts}, not %', quote_nullable(submit.max_attempts)
                USING ERRCODE = '22023';
        END IF;
        IF submit.run_at IS NULL OR submit.run_at > now() + interval '100 years' THEN
            RAISE EXCEPTION 'steward.submit: run_at must be given and at most 100 years from now'
                USING ERRCODE = '22023';
        END IF;
        IF length(submit.unique_key) NOT BETWEEN 1 AND 256 THEN
            RAISE EXCEPTION 'steward.submit: unique_key must be 1 to 256 characters'
                USING ERRCODE = '22023';
        END IF;
        LOOP
            IF submit.unique_key IS NOT NULL THEN
                SELECT j.id INTO job FROM {s}.jobs j
                    WHERE j.queue = submit.queue AND j.unique_key = submit.unique_key
                      AND j.state IN ('queued', 'scheduled', 'running');
                IF FOUND THEN
                    RETURN job;
                END IF;
            END IF;
            -- A submit with the same key that commits first wins; this one then returns
            -- its id.
            INSERT INTO {s}.jobs (queue, state, priority, run_at, max_attempts, unique_key)
                VALUES (submit.queue,
                        CASE WHEN submit.run_at > now() THEN 'scheduled' ELSE 'queued' END,
                        coalesce(submit.priority, 0), submit.run_at, submit.max_attempts,
                        submit.unique_key)
                ON CONFLICT (queue, unique_key)
                    WHERE unique_key IS NOT NULL AND state IN ('queued', 'scheduled', 'running')
                    DO NOTHING
                RETURNING id INTO job;
            EXIT WHEN job IS NOT NULL;
        END LOOP;
        INSERT INTO {s}.job_data (job_id, payload) VALUES (job, submit.payload);
        -- Daemons listening hear of it at commit (a transaction's identical notices
        -- arrive as one).
        PERFORM pg_notify('{channel}', submit.queue);
        RETURN job;
    END
    $fn$;
    "#,
    // 2: jobs moved in from another journal (`steward migrate-journal`): which job each
    // became, so that moving the same journal again moves only what it has not moved.
    r#"
    CREATE TABLE {s}.imported (
        source    text        NOT NULL,
        source_id bigint      NOT NULL,
        job_id    bigint      NOT NULL,
        moved_at  timestamptz NOT NULL DEFAULT now(),
        PRIMARY KEY (source, source_id)
    );
    "#,
    // 3: no foreign keys from job_data and attempts to jobs. Each insert into them
    // (two for every job) checked its key with `SELECT … FOR KEY SHARE` on the job's
    // row, which also writes a lock into that row: 200,000 checks in a run of 100,000
    // jobs. The rows are written only with their job and deleted with it by retention.
    r#"
    ALTER TABLE {s}.job_data DROP CONSTRAINT IF EXISTS job_data_job_id_fkey;
    ALTER TABLE {s}.attempts DROP CONSTRAINT IF EXISTS attempts_job_id_fkey;
    "#,
    // 4: finished jobs move out of the hot table into `jobs_done` (same columns, same
    // order), so that claims, promotions and vacuum on `jobs` see only unfinished rows
    // however long finished ones are kept, and retention deletes from `jobs_done`
    // alone. `jobs_all` reads both. A column added later goes into both tables.
    r#"
    CREATE TABLE {s}.jobs_done (LIKE {s}.jobs INCLUDING CONSTRAINTS);
    ALTER TABLE {s}.jobs_done ADD PRIMARY KEY (id);
    INSERT INTO {s}.jobs_done SELECT * FROM {s}.jobs
        WHERE state IN ('succeeded', 'failed', 'cancelled');
    DELETE FROM {s}.jobs WHERE state IN ('succeeded', 'failed', 'cancelled');
    DROP INDEX {s}.jobs_finished;
    ALTER TABLE {s}.jobs ADD CONSTRAINT jobs_unfinished
        CHECK (state IN ('queued', 'scheduled', 'running'));
    ALTER TABLE {s}.jobs_done ADD CONSTRAINT jobs_done_finished
        CHECK (state IN ('succeeded', 'failed', 'cancelled') AND finished_at IS NOT NULL);
    CREATE INDEX jobs_done_finished_at ON {s}.jobs_done (queue, finished_at);
    CREATE INDEX jobs_done_failed ON {s}.jobs_done (id) WHERE state = 'failed';
    CREATE VIEW {s}.jobs_all AS
        SELECT * FROM {s}.jobs UNION ALL SELECT * FROM {s}.jobs_done;
    "#,
];

/// The columns of `jobs` and `jobs_done`, in their order.
pub const JOB_COLUMNS: &[&str] = &[
    "id",
    "queue",
    "state",
    "priority",
    "run_at",
    "created_at",
    "updated_at",
    "finished_at",
    "attempts",
    "tries",
    "crashes",
    "interruptions",
    "max_attempts",
    "timeout_ms",
    "unique_key",
    "lease_token",
    "lease_host",
    "lease_run",
    "worker",
    "claimed_at",
    "error",
    "progress",
    "progress_message",
];

/// `INSERT INTO <schema>.<table> (...) SELECT ... FROM <from>`: every job column taken
/// from `from` except those `set` gives an expression for. Moves a job between `jobs`
/// and `jobs_done` with the rows a `DELETE ... RETURNING *` gave.
pub fn move_job(schema: &str, table: &str, from: &str, set: &[(&str, &str)]) -> String {
    let values: Vec<String> = JOB_COLUMNS
        .iter()
        .map(|c| match set.iter().find(|(k, _)| k == c) {
            Some((_, v)) => format!("{v} AS {c}"),
            None => format!("{from}.{c}"),
        })
        .collect();
    format!(
        "INSERT INTO {schema}.{table} ({}) SELECT {} FROM {from}",
        JOB_COLUMNS.join(", "),
        values.join(", ")
    )
}

/// The schema version this build knows.
pub const VERSION: i32 = MIGRATIONS.len() as i32;

/// Why the schema could not be brought to [`VERSION`].
#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    #[error(
        "the journal schema {schema} is at version {found}, made by a newer steward (this one knows up to version {VERSION}): upgrade steward on this host; nothing was changed"
    )]
    Newer { schema: String, found: i32 },
    #[error(
        "the database role may not create or change the schema {schema} ({detail}): give the role steward connects as a schema of its own, e.g. CREATE SCHEMA {schema} AUTHORIZATION <role>"
    )]
    Privileges { schema: String, detail: String },
    #[error("cannot prepare the journal schema {schema}: {detail}")]
    Other { schema: String, detail: String },
}

pub use crate::config::check_schema_name;

/// The channel on which daemons hear that jobs were added to `schema`.
pub fn channel(schema: &str) -> String {
    format!("steward_{schema}")
}

fn sql(template: &str, schema: &str) -> String {
    template
        .replace("{s}", schema)
        .replace("{channel}", &channel(schema))
        .replace("{max_attempts}", &crate::config::MAX_ATTEMPTS.to_string())
}

/// Bring `schema` to [`VERSION`], creating it if need be: the version it had before.
pub async fn migrate(client: &mut Client, schema: &str) -> Result<i32, MigrateError> {
    migrate_to(client, schema, VERSION).await
}

/// Bring `schema` to version `target` (at most [`VERSION`]); the version it had before.
async fn migrate_to(client: &mut Client, schema: &str, target: i32) -> Result<i32, MigrateError> {
    check_schema_name(schema).map_err(|detail| MigrateError::Other {
        schema: schema.to_string(),
        detail,
    })?;
    let err = |e: tokio_postgres::Error| classify(schema, e);
    let tx = client.transaction().await.map_err(err)?;
    // One daemon at a time; the others wait here and then find the work done.
    tx.execute(
        "SELECT pg_advisory_xact_lock(hashtextextended('steward schema ' || $1, 0))",
        &[&schema],
    )
    .await
    .map_err(err)?;
    tx.batch_execute(&format!(
        "CREATE SCHEMA IF NOT EXISTS {schema};
         CREATE TABLE IF NOT EXISTS {schema}.meta (name text PRIMARY KEY, value text NOT NULL);"
    ))
    .await
    .map_err(err)?;
    let found: i32 = match tx
        .query_opt(
            &format!("SELECT value FROM {schema}.meta WHERE name = 'schema_version'"),
            &[],
        )
        .await
        .map_err(err)?
    {
        Some(row) => {
            let v: String = row.get(0);
            v.parse().map_err(|_| MigrateError::Other {
                schema: schema.to_string(),
                detail: format!("{schema}.meta holds schema_version {v:?}, which is not a number"),
            })?
        }
        None => 0,
    };
    if found > VERSION {
        return Err(MigrateError::Newer {
            schema: schema.to_string(),
            found,
        });
    }
    let target = target.clamp(found, VERSION);
    let todo = usize::try_from(target - found).unwrap_or(0);
    for m in MIGRATIONS
        .iter()
        .skip(usize::try_from(found).unwrap_or(0))
        .take(todo)
    {
        tx.batch_execute(&sql(m, schema)).await.map_err(err)?;
    }
    tx.execute(
        &format!(
            "INSERT INTO {schema}.meta (name, value) VALUES ('schema_version', $1)
             ON CONFLICT (name) DO UPDATE SET value = excluded.value"
        ),
        &[&target.to_string()],
    )
    .await
    .map_err(err)?;
    tx.commit().await.map_err(err)?;
    Ok(found)
}

#[cfg(test)]
pub(super) async fn migrate_to_for_test(
    client: &mut Client,
    schema: &str,
    target: i32,
) -> Result<i32, MigrateError> {
    migrate_to(client, schema, target).await
}

fn classify(schema: &str, e: tokio_postgres::Error) -> MigrateError {
    let detail = super::describe(&e);
    if e.code() == Some(&tokio_postgres::error::SqlState::INSUFFICIENT_PRIVILEGE) {
        MigrateError::Privileges {
            schema: schema.to_string(),
            detail,
        }
    } else {
        MigrateError::Other {
            schema: schema.to_string(),
            detail,
        }
    }
}
