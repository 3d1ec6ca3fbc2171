//! What an operator set on a pool with `steward stop`, `start` and `scale`: kept in
//! `<state_dir>/operator.json`, so that it holds across reloads and daemon restarts
//! until the operator changes it again (a reload that changes the pool's `instances`
//! drops a scale: the edited configuration wins).

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// The file's name in the state directory.
pub const FILE: &str = "operator.json";
/// The most instances `steward scale` sets (as `instances` in the configuration).
pub const MAX_INSTANCES: u32 = 10_000;
/// The file is refused past this size (it holds a few bytes per pool).
const MAX_FILE: u64 = 1024 * 1024;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Override {
    /// Stopped with `steward stop POOL`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub stopped: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scale: Option<Scale>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Scale {
    pub instances: u32,
    /// The configuration's `instances` when it was set: once that changes, the scale no
    /// longer applies.
    pub configured: u32,
}

impl Override {
    /// The instances the pool runs, given the configuration's.
    pub fn instances(&self, configured: u32) -> u32 {
        if self.stopped {
            return 0;
        }
        match self.scale {
            Some(s) if s.configured == configured => s.instances,
            _ => configured,
        }
    }

    pub fn is_empty(&self) -> bool {
        !self.stopped && self.scale.is_none()
    }

    /// How `steward status` says it, if anything is set.
    pub fn describe(&self, pool: &str, configured: u32) -> Option<String> {
        if self.stopped {
            return Some(format!(
                "stopped by the operator (`steward start {pool}` starts it again)"
            ));
        }
        let s = self.scale.filter(|s| s.configured == configured)?;
        Some(format!(
            "scaled to {} by the operator (the configuration says {configured}; `steward scale {pool} {configured}` goes back)",
            s.instances
        ))
    }
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct File {
    pools: BTreeMap<String, Override>,
}

/// Read the overrides kept in `state_dir`. A missing file is none; a damaged one is none
/// and a warning (the configuration then applies as written).
pub fn load(state_dir: &Path) -> (BTreeMap<String, Override>, Option<String>) {
    let path = state_dir.join(FILE);
    let text = match std::fs::metadata(&path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return (BTreeMap::new(), None),
        Err(e) => {
            return (
                BTreeMap::new(),
                Some(format!("cannot read {}: {e}", path.display())),
            );
        }
        Ok(m) if m.len() > MAX_FILE => {
            return (
                BTreeMap::new(),
                Some(format!(
                    "{} is larger than {MAX_FILE} bytes: ignored",
                    path.display()
                )),
            );
        }
        Ok(_) => match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) => {
                return (
                    BTreeMap::new(),
                    Some(format!("cannot read {}: {e}", path.display())),
                );
            }
        },
    };
    match serde_json::from_str::<File>(&text) {
        Ok(f) => {
            let pools = f
                .pools
                .into_iter()
                .filter(|(_, o)| o.scale.is_none_or(|s| s.instances <= MAX_INSTANCES))
                .collect();
            (pools, None)
        }
        Err(e) => (
            BTreeMap::new(),
            Some(format!(
                "{} is not valid ({e}): the pools run as configured; `steward stop`, `start` or `scale` writes it anew",
                path.display()
            )),
        ),
    }
}

/// Write the overrides to `state_dir`, atomically (a new file renamed over the old one,
/// synced), or remove the file when there are none.
pub fn save(state_dir: &Path, pools: &BTreeMap<String, Override>) -> std::io::Result<()> {
    let path = state_dir.join(FILE);
    let pools: BTreeMap<String, Override> = pools
        .iter()
        .filter(|(_, o)| !o.is_empty())
        .map(|(n, o)| (n.clone(), *o))
        .collect();
    if pools.is_empty() {
        return match std::fs::remove_file(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        };
    }
    let text = serde_json::to_vec_pretty(&File { pools }).map_err(std::io::Error::other)?;
    let tmp: PathBuf = state_dir.join(format!("{FILE}.new"));
    {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(&text)?;
        f.write_all(b"\n")?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, &path)?;
    std::fs::File::open(state_dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_a_pool_runs() {
        let none = Override::default();
        assert_eq!(none.instances(3), 3);
        let stopped = Override {
            stopped: true,
            scale: Some(Scale {
                instances: 5,
                configured: 3,
            }),
        };
        assert_eq!(stopped.instances(3), 0);
        let scaled = Override {
            stopped: false,
            scale: Some(Scale {
                instances: 5,
                configured: 3,
            }),
        };
        assert_eq!(scaled.instances(3), 5);
        // The configuration changed since: it wins.
        assert_eq!(scaled.instances(4), 4);
        assert!(scaled.describe("w", 4).is_none());
        assert!(scaled.describe("w", 3).unwrap().contains("scaled to 5"));
    }

    #[test]
    fn kept_in_a_file_and_a_damaged_file_is_ignored() {
        let dir = std::env::temp_dir().join(format!("steward-operator-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut pools = BTreeMap::new();
        pools.insert(
            "a".to_string(),
            Override {
                stopped: true,
                scale: None,
            },
        );
        pools.insert("b".to_string(), Override::default());
        save(&dir, &pools).unwrap();
        let (read, warning) = load(&dir);
        assert!(warning.is_none());
        assert_eq!(read.len(), 1);
        assert!(read["a"].stopped);
        save(&dir, &BTreeMap::new()).unwrap();
        assert!(!dir.join(FILE).exists());
        std::fs::write(dir.join(FILE), "{not json").unwrap();
        let (read, warning) = load(&dir);
        assert!(read.is_empty());
        assert!(warning.unwrap().contains("is not valid"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
