//! What can be told about a journal's files before SQLite opens them.
//!
//! SQLite makes the best of a damaged journal without a word: a database file truncated
//! to nothing is a new, empty database; a write-ahead log (WAL) whose header is garbage
//! is ignored, and one damaged in the middle is read up to the damage. Each of these
//! silently loses jobs that were acknowledged. So before the journal is opened this
//! module looks at the files themselves, against `journal.state`, a small record the
//! daemon keeps beside the journal (whether it closed the journal cleanly, how many jobs
//! it held, on which boot it ran):
//!
//! - a journal that held jobs and whose database file is now empty or missing;
//! - a WAL missing after the daemon stopped without closing the journal (kill -9, a
//!   crash), when it held every change since the last checkpoint;
//! - a WAL whose header or frames fail their checksums while later, intact commits
//!   follow them, so that SQLite would drop those commits;
//! - a WAL shorter than what the shared-memory index (`journal.db-shm`), left behind by
//!   a daemon killed on this boot, says was committed.
//!
//! The WAL and index layouts are those of SQLite's documented file format
//! (<https://www.sqlite.org/walformat.html>, <https://www.sqlite.org/fileformat2.html>).

use std::fs::File;
use std::io::{Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

/// The record beside the journal.
pub(super) const STATE_FILE: &str = "journal.state";

/// What the last daemon recorded about the journal.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(super) struct Record {
    /// The journal was closed by a daemon that stopped normally.
    pub clean: bool,
    /// `/proc/sys/kernel/random/boot_id` of the boot the daemon ran on.
    pub boot: String,
    /// Jobs in the journal when the record was written.
    pub jobs: u64,
}

impl Record {
    pub fn render(&self) -> String {
        format!(
            "# Written by steward beside its job journal, to tell a damaged journal from a new one.\n\
             # Do not edit; remove it only together with journal.db.\n\
             closed={}\nboot={}\njobs={}\n",
            if self.clean { "clean" } else { "no" },
            self.boot,
            self.jobs
        )
    }

    /// `None` when the text is not a record (then nothing is assumed about the journal).
    pub fn parse(text: &str) -> Option<Record> {
        let mut r = Record::default();
        let (mut closed, mut jobs) = (None, None);
        for line in text.lines() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (k, v) = line.split_once('=')?;
            match k {
                "closed" => closed = Some(v == "clean"),
                "boot" => r.boot = v.to_string(),
                "jobs" => jobs = Some(v.parse().ok()?),
                _ => {}
            }
        }
        r.clean = closed?;
        r.jobs = jobs?;
        Some(r)
    }
}

/// The record in `dir`, if there is a readable one.
pub(super) fn read_record(dir: &Path) -> Option<Record> {
    let text = std::fs::read_to_string(dir.join(STATE_FILE)).ok()?;
    let r = Record::parse(&text);
    if r.is_none() {
        tracing::warn!(
            "{} is not a record steward can read; the journal is checked without it",
            dir.join(STATE_FILE).display()
        );
    }
    r
}

/// Replace the record in `dir` atomically and durably (a new file renamed over the old,
/// then the directory synced).
pub(super) fn write_record(dir: &Path, r: &Record) -> Result<(), String> {
    let path = dir.join(STATE_FILE);
    let tmp = dir.join(format!("{STATE_FILE}.new"));
    let write = || -> std::io::Result<()> {
        let mut f = File::options()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(r.render().as_bytes())?;
        f.sync_all()?;
        std::fs::rename(&tmp, &path)?;
        File::open(dir)?.sync_all()
    };
    write().map_err(|e| format!("cannot write {}: {e}", path.display()))
}

pub(super) use crate::process::boot_id;

const WAL_HEADER: usize = 32;
const FRAME_HEADER: usize = 24;
const WAL_MAGIC: u32 = 0x377f_0682;
const WAL_VERSION: u32 = 3_007_000;

fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn le32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// SQLite's WAL checksum: 32-bit words in pairs, in the byte order the log was written
/// with, folded into two running sums.
fn checksum(big_endian: bool, data: &[u8], mut s: (u32, u32)) -> (u32, u32) {
    for pair in data.chunks_exact(8) {
        let (a, b) = if big_endian {
            (be32(pair, 0), be32(pair, 4))
        } else {
            (le32(pair, 0), le32(pair, 4))
        };
        s.0 = s.0.wrapping_add(a).wrapping_add(s.1);
        s.1 = s.1.wrapping_add(b).wrapping_add(s.0);
    }
    s
}

/// What a WAL holds, as SQLite's recovery would read it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Wal {
    /// Shorter than a header: SQLite treats it as empty, and nothing was committed in it.
    Empty,
    /// The header fails its checks although bytes follow it.
    BadHeader,
    Read {
        salts: [u8; 8],
        /// Frames up to and including the last commit SQLite would accept.
        committed: u64,
        /// The first frame (1-based) that fails its checks, if any.
        broken_at: Option<u64>,
        /// Commits of this log generation after `broken_at`, which SQLite would drop.
        commits_after_break: u64,
    },
}

pub(super) fn read_wal(bytes: &[u8]) -> Wal {
    if bytes.len() < WAL_HEADER {
        return Wal::Empty;
    }
    let h = &bytes[..WAL_HEADER];
    let magic = be32(h, 0);
    let page = be32(h, 8) as usize;
    let page_ok = (512..=65536).contains(&page) && page.is_power_of_two();
    if magic & !1 != WAL_MAGIC || be32(h, 4) != WAL_VERSION || !page_ok {
        return if bytes.len() > WAL_HEADER {
            Wal::BadHeader
        } else {
            Wal::Empty
        };
    }
    let big_endian = magic & 1 == 1;
    let mut sum = checksum(big_endian, &h[..24], (0, 0));
    if sum != (be32(h, 24), be32(h, 28)) {
        return if bytes.len() > WAL_HEADER {
            Wal::BadHeader
        } else {
            Wal::Empty
        };
    }
    let mut salts = [0u8; 8];
    salts.copy_from_slice(&h[16..24]);
    let frame = FRAME_HEADER + page;
    let (mut committed, mut broken_at, mut commits_after_break) = (0, None, 0);
    for (i, f) in bytes[WAL_HEADER..].chunks(frame).enumerate() {
        let n = i as u64 + 1;
        let ours = f.len() >= FRAME_HEADER && f[8..16] == salts;
        let commit = f.len() >= FRAME_HEADER && be32(f, 4) != 0;
        if broken_at.is_some() {
            if ours && commit && f.len() == frame {
                commits_after_break += 1;
            }
            continue;
        }
        let valid = f.len() == frame && ours && be32(f, 0) != 0 && {
            sum = checksum(big_endian, &f[..8], sum);
            sum = checksum(big_endian, &f[FRAME_HEADER..], sum);
            sum == (be32(f, 16), be32(f, 20))
        };
        if !valid {
            broken_at = Some(n);
        } else if commit {
            committed = n;
        }
    }
    Wal::Read {
        salts,
        committed,
        broken_at,
        commits_after_break,
    }
}

/// What the shared-memory index says was committed to the WAL: (frames, the log's salts).
/// `None` unless both copies of its header agree and pass their checksum.
pub(super) fn read_index(bytes: &[u8]) -> Option<(u64, [u8; 8])> {
    const HDR: usize = 48;
    if bytes.len() < 2 * HDR {
        return None;
    }
    let (a, b) = (&bytes[..HDR], &bytes[HDR..2 * HDR]);
    // Native byte order: the index is never moved between machines.
    let word = |b: &[u8], at: usize| u32::from_ne_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]]);
    if a != b || word(a, 0) != WAL_VERSION || a[12] != 1 {
        return None;
    }
    let mut s = (0u32, 0u32);
    for pair in a[..40].chunks_exact(8) {
        s.0 = s.0.wrapping_add(word(pair, 0)).wrapping_add(s.1);
        s.1 = s.1.wrapping_add(word(pair, 4)).wrapping_add(s.0);
    }
    if s != (word(a, 40), word(a, 44)) {
        return None;
    }
    let mut salts = [0u8; 8];
    salts.copy_from_slice(&a[32..40]);
    Some((u64::from(word(a, 16)), salts))
}

/// The most of a WAL or index read to check it (a larger log is read to this point).
const MAX_READ: u64 = 1 << 30;

fn read_file(path: &Path) -> Option<Vec<u8>> {
    let f = File::open(path).ok()?;
    let mut bytes = Vec::new();
    f.take(MAX_READ).read_to_end(&mut bytes).ok()?;
    Some(bytes)
}

/// Every sign of damage in `dir`'s journal files; empty when none is seen. `db_len` is
/// the size of `journal.db` as found (`None`: it did not exist).
pub(super) fn inspect(dir: &Path, record: Option<&Record>, db_len: Option<u64>) -> Vec<String> {
    let mut found = Vec::new();
    let held = |r: &Record| r.jobs > 0;
    let wal_path = dir.join("journal.db-wal");
    let wal = read_file(&wal_path);
    let wal_frames = wal.as_deref().map(read_wal);
    if let Some(r) = record
        && db_len.unwrap_or(0) == 0
        && (held(r) || matches!(wal_frames, Some(Wal::Read { committed: 1.., .. })))
    {
        found.push(format!(
            "journal.db is {}, but the journal held {} jobs when steward last wrote {STATE_FILE}",
            if db_len.is_none() { "missing" } else { "empty" },
            r.jobs
        ));
    }
    let index = read_file(&dir.join("journal.db-shm")).and_then(|b| read_index(&b));
    match &wal_frames {
        None => {
            if record.is_some_and(|r| !r.clean) && db_len.is_some_and(|l| l > 0) {
                found.push(
                    "the write-ahead log journal.db-wal is missing, but steward stopped without closing the journal, so the log held every change since the last checkpoint"
                        .to_string(),
                );
            } else if index.is_some_and(|(frames, _)| frames > 0) {
                found.push(
                    "the write-ahead log journal.db-wal is missing, but its index journal.db-shm says it held committed changes"
                        .to_string(),
                );
            }
        }
        Some(Wal::Empty) => {}
        Some(Wal::BadHeader) => found.push(format!(
            "the header of the write-ahead log journal.db-wal is damaged, so none of the {} bytes after it could be read",
            wal.as_ref().map_or(0, |b| b.len() - WAL_HEADER)
        )),
        Some(Wal::Read {
            salts,
            committed,
            broken_at,
            commits_after_break,
        }) => {
            if let Some(at) = broken_at
                && *commits_after_break > 0
            {
                found.push(format!(
                    "frame {at} of the write-ahead log journal.db-wal is damaged; {commits_after_break} committed transactions after it could not be read"
                ));
            }
            // The index of a daemon killed on this boot is as current as the log; after
            // a crash of the machine it may be older or newer, and proves nothing.
            let same_boot = record.is_some_and(|r| !r.clean && !r.boot.is_empty() && r.boot == boot_id());
            if let Some((frames, index_salts)) = index
                && same_boot
                && index_salts == *salts
                && frames > *committed
                && found.is_empty()
            {
                found.push(format!(
                    "the write-ahead log journal.db-wal ends with frame {committed}, but its index says {frames} frames were committed (the log was truncated or damaged)"
                ));
            }
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    const PAGE: usize = 512;

    /// A WAL of `commits` one-frame transactions, checksummed as SQLite does.
    fn wal(commits: u32) -> Vec<u8> {
        let mut b = Vec::new();
        b.extend(WAL_MAGIC.to_be_bytes());
        b.extend(WAL_VERSION.to_be_bytes());
        b.extend((PAGE as u32).to_be_bytes());
        b.extend(0u32.to_be_bytes());
        b.extend([1, 2, 3, 4, 5, 6, 7, 8]);
        let mut s = checksum(false, &b[..24], (0, 0));
        b.extend(s.0.to_be_bytes());
        b.extend(s.1.to_be_bytes());
        for n in 1..=commits {
            let mut f = Vec::new();
            f.extend(n.to_be_bytes());
            f.extend(n.to_be_bytes());
            f.extend([1, 2, 3, 4, 5, 6, 7, 8]);
            let page = vec![n as u8; PAGE];
            s = checksum(false, &f[..8], s);
            s = checksum(false, &page, s);
            f.extend(s.0.to_be_bytes());
            f.extend(s.1.to_be_bytes());
            f.extend(page);
            b.extend(f);
        }
        b
    }

    #[test]
    fn an_intact_log_is_read_to_its_last_commit() {
        assert_eq!(
            read_wal(&wal(5)),
            Wal::Read {
                salts: [1, 2, 3, 4, 5, 6, 7, 8],
                committed: 5,
                broken_at: None,
                commits_after_break: 0
            }
        );
        assert_eq!(read_wal(&[]), Wal::Empty);
    }

    #[test]
    fn damage_in_the_middle_is_seen_with_the_commits_it_hides() {
        let mut b = wal(5);
        let third = WAL_HEADER + 2 * (FRAME_HEADER + PAGE) + FRAME_HEADER + 100;
        for x in &mut b[third..third + 64] {
            *x ^= 0xff;
        }
        let Wal::Read {
            committed,
            broken_at,
            commits_after_break,
            ..
        } = read_wal(&b)
        else {
            panic!("the header is intact")
        };
        assert_eq!((committed, broken_at, commits_after_break), (2, Some(3), 2));
    }

    #[test]
    fn a_garbled_header_is_not_an_empty_log() {
        let mut b = wal(2);
        b[20] ^= 1;
        assert_eq!(read_wal(&b), Wal::BadHeader);
        b[..32].fill(0x41);
        assert_eq!(read_wal(&b), Wal::BadHeader);
        // A header alone holds nothing that could be lost.
        assert_eq!(read_wal(&b[..32]), Wal::Empty);
    }

    #[test]
    fn a_cut_log_ends_at_its_last_whole_commit() {
        let b = wal(4);
        let cut = &b[..b.len() / 2];
        let Wal::Read {
            committed,
            commits_after_break,
            ..
        } = read_wal(cut)
        else {
            panic!()
        };
        assert_eq!((committed, commits_after_break), (1, 0));
    }

    #[test]
    fn a_record_survives_its_round_trip_and_rejects_garbage() {
        let r = Record {
            clean: false,
            boot: "abc".into(),
            jobs: 220,
        };
        assert_eq!(Record::parse(&r.render()), Some(r));
        assert_eq!(Record::parse("jobs=many\nclosed=clean"), None);
        assert_eq!(Record::parse(""), None);
    }

    #[test]
    fn an_index_is_trusted_only_when_both_copies_agree_and_check() {
        let mut h = vec![0u8; 48];
        h[..4].copy_from_slice(&WAL_VERSION.to_ne_bytes());
        h[12] = 1;
        h[16..20].copy_from_slice(&7u32.to_ne_bytes());
        h[32..40].copy_from_slice(&[1, 2, 3, 4, 5, 6, 7, 8]);
        let mut s = (0u32, 0u32);
        for pair in h[..40].chunks_exact(8) {
            let w = |at: usize| u32::from_ne_bytes(pair[at..at + 4].try_into().unwrap());
            s.0 = s.0.wrapping_add(w(0)).wrapping_add(s.1);
            s.1 = s.1.wrapping_add(w(4)).wrapping_add(s.0);
        }
        h[40..44].copy_from_slice(&s.0.to_ne_bytes());
        h[44..48].copy_from_slice(&s.1.to_ne_bytes());
        let mut both = h.clone();
        both.extend(&h);
        assert_eq!(read_index(&both), Some((7, [1, 2, 3, 4, 5, 6, 7, 8])));
        both[60] ^= 1;
        assert_eq!(read_index(&both), None);
    }

    /// The layouts read here are SQLite's own: a live journal's log and index read back
    /// as SQLite wrote them.
    #[test]
    fn a_log_and_index_written_by_sqlite_read_back_whole() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("journal.db");
        let conn = rusqlite::Connection::open(&db).unwrap();
        conn.execute_batch(
            "PRAGMA journal_mode = WAL; PRAGMA wal_autocheckpoint = 0; CREATE TABLE t (x TEXT);",
        )
        .unwrap();
        for i in 0..20 {
            conn.execute("INSERT INTO t VALUES (?1)", [format!("{i:0>3000}")])
                .unwrap();
        }
        let wal = std::fs::read(dir.path().join("journal.db-wal")).unwrap();
        let Wal::Read {
            salts,
            committed,
            broken_at,
            commits_after_break,
        } = read_wal(&wal)
        else {
            panic!("SQLite's log did not read as one")
        };
        assert!(committed >= 21, "{committed}");
        assert_eq!((broken_at, commits_after_break), (None, 0));
        let shm = std::fs::read(dir.path().join("journal.db-shm")).unwrap();
        assert_eq!(read_index(&shm), Some((committed, salts)));
        // Flip bytes in the middle: the commits after them are seen as lost.
        let mut flipped = wal.clone();
        let mid = flipped.len() / 2;
        for b in &mut flipped[mid..mid + 64] {
            *b ^= 0x5a;
        }
        let Wal::Read {
            committed: kept,
            commits_after_break,
            ..
        } = read_wal(&flipped)
        else {
            panic!()
        };
        assert!(
            kept < committed && commits_after_break > 0,
            "{kept} {commits_after_break}"
        );
    }

    #[test]
    fn inspection_names_each_damage() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let unclean = Record {
            clean: false,
            boot: boot_id(),
            jobs: 3,
        };
        let clean = Record {
            clean: true,
            ..unclean.clone()
        };
        // A new state directory, and a journal closed cleanly: nothing to say.
        assert!(inspect(d, None, None).is_empty());
        assert!(inspect(d, Some(&clean), Some(4096)).is_empty());
        let found = inspect(d, Some(&clean), Some(0));
        assert!(found[0].contains("journal.db is empty"), "{found:?}");
        let found = inspect(d, Some(&unclean), Some(4096));
        assert!(found[0].contains("journal.db-wal is missing"), "{found:?}");
        std::fs::write(d.join("journal.db-wal"), wal(3)).unwrap();
        assert!(inspect(d, Some(&unclean), Some(4096)).is_empty());
    }
}
