//! Each worker's and job process's own cgroup: made with its pool's limits before the
//! spawn, read when it exits (an OOM kill is named as such), killed as a whole (so that
//! children that left the process group die too) and removed once empty.

use std::time::{Duration, Instant};

use crate::config::{Limits, PoolSpec, human_size};
use crate::process::cgroup::{Group, Tree, Usage, Without};

/// A cgroup that could not be removed yet (still emptying, or busy right after an OOM
/// kill) is tried again on every turn of housekeeping for this long, then given up on
/// with a warning (systemd removes it with the unit).
const REMOVE_FOR: Duration = Duration::from_secs(60);

/// Cgroups waiting for removal, at most; past it the oldest is given up on (with its
/// warning). Only a kernel that never empties them could fill it.
const REMOVALS_MAX: usize = 4096;

pub(super) struct Resources {
    tree: Option<Tree>,
    without: Option<Without>,
    /// Names cgroups uniquely in this run.
    next: u64,
    removing: Vec<(Group, Instant)>,
    /// Pools already warned of limits that cannot be enforced, with what they lacked.
    warned: std::collections::BTreeMap<String, Vec<String>>,
}

/// What a finished run's cgroup said.
pub(super) struct Ended {
    pub usage: Usage,
}

impl Ended {
    /// "killed by the OOM killer (memory_max 512M, peak 530M)" if the kernel's OOM
    /// killer ended it.
    pub fn oom(&self, limits: &Limits) -> Option<String> {
        if self.usage.oom_kills == 0 {
            return None;
        }
        let mut parts = Vec::new();
        if let Some(m) = limits.memory_max {
            parts.push(format!("memory_max {}", human_size(m)));
        }
        if let Some(p) = self.usage.memory_peak_bytes {
            parts.push(format!("peak {}", human_size(p)));
        }
        Some(if parts.is_empty() {
            "killed by the OOM killer".to_string()
        } else {
            format!("killed by the OOM killer ({})", parts.join(", "))
        })
    }
}

impl Resources {
    pub fn new(set_up: Result<Tree, Without>) -> Resources {
        let (tree, without) = match set_up {
            Ok(t) => (Some(t), None),
            Err(w) => (None, Some(w)),
        };
        Resources {
            tree,
            without,
            next: 0,
            removing: Vec::new(),
            warned: Default::default(),
        }
    }

    /// For `steward status`: where workers' cgroups are, or why there are none.
    pub fn describe(&self) -> (bool, String) {
        match (&self.tree, &self.without) {
            (Some(t), _) => (
                true,
                format!(
                    "{}/w (controllers: {})",
                    t.root.display(),
                    if t.controllers.is_empty() {
                        "none".to_string()
                    } else {
                        t.controllers.join(" ")
                    }
                ),
            ),
            (None, Some(w)) => (false, w.to_string()),
            (None, None) => (false, "off".into()),
        }
    }

    /// The limits of `spec` that are not enforced here, as "memory_max (no memory
    /// controller)".
    pub fn unenforced(&self, spec: &PoolSpec) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        let settings = spec.limits.settings();
        let mut keys: Vec<(&str, &str)> = settings
            .iter()
            .filter(|s| !s.optional)
            .map(|s| (s.key, s.controller))
            .collect();
        if spec.limits.recycle_above.is_some() {
            keys.push(("recycle_above", "memory"));
        }
        for (key, controller) in keys {
            let why = match &self.tree {
                None => "no cgroups".to_string(),
                Some(t) if !t.has(controller) => format!("no {controller} controller"),
                Some(_) => continue,
            };
            let item = format!("{key} ({why})");
            if !out.contains(&item) {
                out.push(item);
            }
        }
        out
    }

    /// Warn once (per pool and per change) of limits that are configured and cannot be
    /// enforced; never a failure.
    pub fn warn_unenforced(&mut self, spec: &PoolSpec) {
        let missing = self.unenforced(spec);
        if self.warned.get(&spec.name) == Some(&missing) {
            return;
        }
        if !missing.is_empty() {
            let how = match &self.without {
                Some(w) => format!("workers have no cgroups of their own: {w}. Run steward as the packaged systemd unit (Delegate=cpu memory pids)"),
                None => "the unit's cgroup lacks those controllers: the kernel or the unit's Delegate= does not provide them".to_string(),
            };
            tracing::warn!(POOL = %spec.name, "pool {}: limits not enforced: {}; {how}", spec.name, missing.join(", "));
        }
        self.warned.insert(spec.name.clone(), missing);
    }

    pub fn forget_pool(&mut self, name: &str) {
        self.warned.remove(name);
    }

    /// A cgroup for the next run of `pool`'s instance `index`, with the pool's limits
    /// (those whose controller is there). `Ok(None)` without cgroups.
    pub fn create(&mut self, spec: &PoolSpec, index: u32) -> std::io::Result<Option<Group>> {
        let Some(tree) = &self.tree else {
            return Ok(None);
        };
        self.next += 1;
        let name = format!("{}.{}.{}", spec.name, index, self.next);
        let settings: Vec<(&'static str, String, bool)> = spec
            .limits
            .settings()
            .into_iter()
            .filter(|s| tree.has(s.controller))
            .map(|s| (s.file, s.value, s.optional))
            .collect();
        tree.create(&name, &settings).map(Some)
    }

    /// A run is over: read its cgroup, kill whatever is left in it, and remove it (now,
    /// or on a later turn once it is empty).
    pub fn release(&mut self, group: Group, now: Instant) -> Ended {
        let usage = group.usage();
        if let Err(e) = group.kill() {
            tracing::warn!(
                "cannot kill what is left in cgroup {}: {e}",
                group.path().display()
            );
        }
        match group.remove() {
            Ok(true) => {}
            Ok(false) => self.queue_removal(group, now),
            Err(e) => tracing::warn!("{e}"),
        }
        Ended { usage }
    }

    fn queue_removal(&mut self, group: Group, now: Instant) {
        if self.removing.len() >= REMOVALS_MAX {
            let (old, _) = self.removing.remove(0);
            tracing::warn!(
                "giving up on removing cgroup {}: too many waiting; systemd removes it when steward stops",
                old.path().display()
            );
        }
        self.removing.push((group, now));
    }

    /// Housekeeping: remove the cgroups that have emptied since.
    pub fn tick(&mut self, now: Instant) {
        self.removing.retain(|(g, since)| match g.remove() {
            Ok(true) => false,
            Ok(false) if now.saturating_duration_since(*since) < REMOVE_FOR => {
                let _ = g.kill();
                true
            }
            Ok(false) => {
                tracing::warn!(
                    "cgroup {} is still not empty {} after its kill; leaving it to systemd",
                    g.path().display(),
                    super::human(REMOVE_FOR)
                );
                false
            }
            Err(e) => {
                tracing::warn!("{e}");
                false
            }
        });
    }

    /// At the end of a stop: wait a little for the last cgroups to empty and remove them.
    pub fn finish(&mut self) {
        for (g, _) in std::mem::take(&mut self.removing) {
            let _ = g.kill();
            g.wait_empty(Duration::from_secs(2));
            let _ = g.remove();
        }
    }
}
