//! Each worker's and job process's own cgroup: made with its pool's limits before the
//! spawn, read when it exits (an OOM kill is named as such), killed as a whole (so that
//! children that left the process group die too) and removed once empty.

use std::time::{Duration, Instant};

use crate::config::{Limits, PoolSpec, human_size};
use crate::process::cgroup::{Group, Tree, Without};

/// A cgroup that could not be removed yet (still emptying, or busy right after an OOM
/// kill) is tried again on every turn of housekeeping for this long, then given up on
/// with a warning (systemd removes it with the unit).
const REMOVE_FOR: Duration = Duration::from_secs(60);

/// Cgroups waiting for removal, at most; past it the oldest is given up on (with its
/// warning). Only a kernel that never empties them could fill it.
const REMOVALS_MAX: usize = 4096;

pub(super) struct Resources {
    /// The unit's delegated cgroup set up for workers, or why there is none.
    set_up: Result<Tree, Without>,
    /// Names cgroups uniquely in this run.
    next: u64,
    removing: Vec<(Group, Instant)>,
    /// Pools already warned of limits that cannot be enforced, with what they lacked.
    warned: std::collections::BTreeMap<String, Vec<String>>,
    /// Exec pools' lanes keep their cgroup from job to job (emptied in between): making
    /// and removing a memory cgroup per job would cost more than many jobs themselves.
    lanes: std::collections::HashMap<(String, u32), LaneGroup>,
}

struct LaneGroup {
    group: Group,
    /// The limits it was made with: other limits, a new group.
    limits: Limits,
    /// OOM kills of earlier jobs in it (its counter only grows).
    oom_seen: u64,
}

/// What a finished run's cgroup said.
pub(super) struct Ended {
    /// OOM kills in this run.
    oom_kills: u64,
    /// The group's peak memory, read when there was an OOM kill.
    peak: Option<u64>,
}

impl Ended {
    /// "killed by the OOM killer (memory_max 512M, peak 530M)" if the kernel's OOM
    /// killer ended it.
    pub fn oom(&self, limits: &Limits) -> Option<String> {
        if self.oom_kills == 0 {
            return None;
        }
        let mut parts = Vec::new();
        if let Some(m) = limits.memory_max {
            parts.push(format!("memory_max {}", human_size(m)));
        }
        if let Some(p) = self.peak {
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
        Resources {
            set_up,
            next: 0,
            removing: Vec::new(),
            warned: Default::default(),
            lanes: Default::default(),
        }
    }

    /// For `steward status`: where workers' cgroups are, or why there are none.
    pub fn describe(&self) -> (bool, String) {
        match &self.set_up {
            Ok(t) => (
                true,
                format!(
                    "{}/w (controllers: {})",
                    t.root.display(),
                    t.controller_list()
                ),
            ),
            Err(w) => (false, w.to_string()),
        }
    }

    /// The limits of `spec` that are not enforced here, as "memory_max (no memory
    /// controller)".
    pub fn unenforced(&self, spec: &PoolSpec) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        for (key, controller) in spec.limits.needs() {
            let why = match &self.set_up {
                Err(_) => "no cgroups".to_string(),
                Ok(t) if !t.has(controller) => format!("no {controller} controller"),
                Ok(_) => continue,
            };
            out.push(format!("{key} ({why})"));
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
            let how = match &self.set_up {
                Err(w) => format!("workers have no cgroups of their own: {w}. Run steward as the packaged systemd unit (Delegate=cpu memory pids)"),
                Ok(_) => "the unit's cgroup lacks those controllers: the kernel or the unit's Delegate= does not provide them".to_string(),
            };
            tracing::warn!(POOL = %spec.name, "pool {}: limits not enforced: {}; {how}", spec.name, missing.join(", "));
        }
        self.warned.insert(spec.name.clone(), missing);
    }

    /// Pool `name` is gone: its lanes' cgroups go too.
    pub fn forget_pool(&mut self, name: &str, now: Instant) {
        self.warned.remove(name);
        let keys: Vec<(String, u32)> = self
            .lanes
            .keys()
            .filter(|(p, _)| p == name)
            .cloned()
            .collect();
        for k in keys {
            if let Some(lg) = self.lanes.remove(&k) {
                self.release(lg.group, now);
            }
        }
    }

    /// The cgroup of lane `lane` of exec pool `spec` for its next job, made once and
    /// reused while it is empty and its limits are the pool's: (its path, the open
    /// `cgroup.procs` the job process joins). `Ok(None)` without cgroups.
    pub fn for_job(
        &mut self,
        spec: &PoolSpec,
        lane: u32,
        now: Instant,
    ) -> std::io::Result<Option<(std::path::PathBuf, std::os::fd::OwnedFd)>> {
        if self.set_up.is_err() {
            return Ok(None);
        }
        let key = (spec.name.clone(), lane);
        if let Some(lg) = self.lanes.get(&key) {
            if lg.limits == spec.limits && !lg.group.populated() {
                let fd = lg.group.open_procs()?;
                return Ok(Some((lg.group.path().to_path_buf(), fd)));
            }
            // Other limits now, or what the last job left is still dying: a new one.
            if let Some(old) = self.lanes.remove(&key) {
                self.release(old.group, now);
            }
        }
        let Some(mut group) = self.create(spec, lane)? else {
            return Ok(None);
        };
        let fd = match group.take_procs() {
            Some(fd) => fd,
            None => group.open_procs()?,
        };
        let path = group.path().to_path_buf();
        self.lanes.insert(
            key,
            LaneGroup {
                group,
                limits: spec.limits.clone(),
                oom_seen: 0,
            },
        );
        Ok(Some((path, fd)))
    }

    /// A job process of lane `lane` of pool `pool` exited: what its cgroup says of it
    /// (OOM kills since the job began), and whatever it left behind killed.
    pub fn job_ended(&mut self, pool: &str, lane: u32) -> Option<Ended> {
        let lg = self.lanes.get_mut(&(pool.to_string(), lane))?;
        let kills = lg.group.oom_kills();
        let new_kills = kills.saturating_sub(lg.oom_seen);
        lg.oom_seen = kills;
        let peak = (new_kills > 0).then(|| lg.group.memory_peak()).flatten();
        if let Err(e) = lg.group.kill() {
            tracing::warn!(
                "cannot kill what is left in cgroup {}: {e}",
                lg.group.path().display()
            );
        }
        Some(Ended {
            oom_kills: new_kills,
            peak,
        })
    }

    /// A cgroup for the next run of `pool`'s instance `index`, with the pool's limits
    /// (those whose controller is there). `Ok(None)` without cgroups.
    pub fn create(&mut self, spec: &PoolSpec, index: u32) -> std::io::Result<Option<Group>> {
        let Ok(tree) = &self.set_up else {
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
        let oom_kills = group.oom_kills();
        let peak = (oom_kills > 0).then(|| group.memory_peak()).flatten();
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
        Ended { oom_kills, peak }
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
        let lanes: Vec<Group> = self.lanes.drain().map(|(_, lg)| lg.group).collect();
        let removing = std::mem::take(&mut self.removing)
            .into_iter()
            .map(|(g, _)| g)
            .chain(lanes);
        for g in removing {
            let _ = g.kill();
            g.wait_empty(Duration::from_secs(2));
            let _ = g.remove();
        }
    }
}
