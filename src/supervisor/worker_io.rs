//! The two tasks behind each protocol worker's socket: one reads lines and hands them to
//! the loop as events, one writes the lines the loop queues. The loop never waits on a
//! worker's socket.

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;
use tokio::sync::mpsc;

use super::{Event, SlotId};
use crate::protocol::{self, MAX_LINE};

/// Bytes of queued lines gathered into one write, at most (one line may exceed it).
const WRITE_BATCH: usize = 64 * 1024;

/// Start the tasks; returns the queue of lines to send to the worker.
pub fn start(
    stream: UnixStream,
    slot: SlotId,
    pid: i32,
    events: mpsc::UnboundedSender<Event>,
) -> mpsc::UnboundedSender<String> {
    let (read_half, mut write_half) = stream.into_split();
    let (tx, mut rx) = mpsc::unbounded_channel::<String>();
    tokio::spawn(async move {
        while let Some(mut out) = rx.recv().await {
            // Lines queued together (the jobs of one claim) go out in one write.
            while out.len() < WRITE_BATCH {
                match rx.try_recv() {
                    Ok(line) => out.push_str(&line),
                    Err(_) => break,
                }
            }
            if write_half.write_all(out.as_bytes()).await.is_err() {
                break;
            }
        }
    });
    tokio::spawn(async move {
        let mut reader = BufReader::with_capacity(64 * 1024, read_half);
        let mut line: Vec<u8> = Vec::new();
        let mut oversized = false;
        loop {
            let buf = match reader.fill_buf().await {
                Ok([]) | Err(_) => break,
                Ok(b) => b,
            };
            let (chunk, newline) = match buf.iter().position(|b| *b == b'\n') {
                Some(i) => (&buf[..i], true),
                None => (buf, false),
            };
            if !oversized {
                if line.len() + chunk.len() > MAX_LINE {
                    oversized = true;
                    line.clear();
                } else {
                    line.extend_from_slice(chunk);
                }
            }
            let used = chunk.len() + usize::from(newline);
            reader.consume(used);
            if newline {
                let msg = if oversized {
                    Err(format!(
                        "line longer than {} MiB ignored",
                        MAX_LINE / (1024 * 1024)
                    ))
                } else {
                    protocol::parse(&line)
                };
                oversized = false;
                line.clear();
                if events.send(Event::FromWorker { slot, pid, msg }).is_err() {
                    break;
                }
            }
        }
    });
    tx
}
