//! Standard output of the commands.
//!
//! Each call goes out in one write, so a reader sees whole answers. A reader that stops
//! early (`steward status --json | grep -q running`, `steward jobs | head -3`) is not an
//! error of steward's: the command ends at once with exit 0 and says nothing. Any other
//! write error (a full disk behind a redirect) ends the command with a message.

use std::io::{ErrorKind, Write};

use crate::error::Failure;

/// Write `text` to stdout and flush it.
pub fn print(text: &str) -> Result<(), Failure> {
    write_bytes(text.as_bytes())
}

/// Write `text` and a newline.
pub fn line(text: &str) -> Result<(), Failure> {
    let mut s = String::with_capacity(text.len() + 1);
    s.push_str(text);
    s.push('\n');
    print(&s)
}

pub fn write_bytes(bytes: &[u8]) -> Result<(), Failure> {
    let mut stdout = std::io::stdout().lock();
    stdout
        .write_all(bytes)
        .and_then(|()| stdout.flush())
        .map_err(|e| match e.kind() {
            ErrorKind::BrokenPipe => Failure::OutputClosed,
            _ => Failure::Failed(format!("cannot write to standard output: {e}")),
        })
}
