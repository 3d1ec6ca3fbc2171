//! Micro-benchmarks of the hot pieces, so regressions show early:
//! the protocol codec (every job crosses it twice) and a claim + finish round trip
//! through the journal writer (every job does one), and the text log line the supervisor
//! writes when a job starts (every job logs two).

use std::sync::Arc;
use std::sync::mpsc;

use criterion::{Criterion, criterion_group, criterion_main};

use steward::hot::{NewJob, Outcome, QueueSpec, Synchronous, TextLayer, job_line, parse};

fn codec(c: &mut Criterion) {
    let done = br#"{"type":"done","id":123456,"result":{"thumbs":[1,2,3],"ok":true}}"#;
    c.bench_function("protocol: parse a done line", |b| {
        b.iter(|| parse(std::hint::black_box(done)))
    });
    let payload = r#"{"file":"/srv/in/image-0001.png","sizes":[64,128,256]}"#;
    c.bench_function("protocol: write a job line", |b| {
        b.iter(|| {
            job_line(
                123456,
                "thumbnails",
                1,
                std::hint::black_box(payload),
                Some("2026-11-23T18:00:00.000Z"),
            )
        })
    });
}

fn claim_finish(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("tempdir");
    // synchronous = normal: measure the writer's work, not the disk's fsync.
    let (journal, owner, _) = steward::hot::open_journal(
        dir.path(),
        Synchronous::Normal,
        "bench",
        Arc::default(),
        false,
    )
    .expect("journal");
    let jobs: Vec<NewJob> = (0..50_000)
        .map(|_| NewJob {
            queue: "q".into(),
            payload: "{}".into(),
            priority: 0,
            run_at_ms: 0,
            max_attempts: 5,
            timeout_ms: None,
            key: None,
        })
        .collect();
    let (tx, rx) = mpsc::channel();
    journal.submit(jobs, move |r| {
        let _ = tx.send(r.is_ok());
    });
    assert!(rx.recv().unwrap_or(false));
    let backoff = QueueSpec::new("q").retry_backoff;
    c.bench_function(
        "journal: claim 1 job, then finish it (one round trip each)",
        |b| {
            b.iter(|| {
                let (tx, rx) = mpsc::channel();
                journal.claim(vec!["q".into()], 1, "w/0".into(), 1, move |r| {
                    let _ = tx.send(r.ok().and_then(|c| c.jobs.into_iter().next()));
                });
                if let Ok(Some(job)) = rx.recv() {
                    let (tx, rx) = mpsc::channel();
                    journal.finish(
                        job.id,
                        job.token,
                        Outcome::Succeeded { result: None },
                        backoff.clone(),
                        None,
                        move |r| {
                            let _ = tx.send(r.is_ok());
                        },
                    );
                    let _ = rx.recv();
                }
            })
        },
    );
    drop(journal);
    owner.close();
}

fn log_line(c: &mut Criterion) {
    use tracing_subscriber::layer::SubscriberExt;
    // The line is built in full; only the write(2) is left out.
    let layer = TextLayer::with_writer(false, |line| {
        std::hint::black_box(line);
    });
    let subscriber = tracing_subscriber::registry()
        .with(tracing_subscriber::filter::LevelFilter::INFO)
        .with(layer);
    tracing::subscriber::with_default(subscriber, || {
        let (queue, pool, instance, pid) = ("thumbnails", "resize", 3u32, 41_234);
        c.bench_function("log: format a job-started text line", |b| {
            let mut job = 1_000_000i64;
            b.iter(|| {
                job += 1;
                tracing::info!(JOB_ID = job, QUEUE = %queue, ATTEMPT = 1, POOL = %pool, INSTANCE = instance,
                    "job {job} attempt 1 started on worker {pool}/{instance} (pid {pid}) after 3ms in the queue");
            })
        });
    });
}

criterion_group!(benches, codec, claim_finish, log_line);
criterion_main!(benches);
