//! Scenarios 17 and 18: scenario 1 with workers written with the worker libraries
//! (clients/python, clients/node) and a handler that does nothing, so that users know
//! what the library costs next to the bare protocol.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::json;

use super::{Bed, Sizes, fail, submit_batches, wait_succeeded};
use crate::control::client::Client;
use crate::error::Failure;

#[derive(Clone, Copy)]
pub enum Lang {
    Python,
    Node,
}

impl Lang {
    pub fn name(self) -> &'static str {
        match self {
            Lang::Python => "Python",
            Lang::Node => "Node.js",
        }
    }

    fn program(self) -> &'static str {
        match self {
            Lang::Python => "python3",
            Lang::Node => "node",
        }
    }

    /// The library's directory under a clients directory.
    fn library(self, clients: &Path) -> PathBuf {
        match self {
            Lang::Python => clients.join("python"),
            Lang::Node => clients.join("node"),
        }
    }

    fn script(self, library: &Path) -> (String, String) {
        let lib = library.display().to_string();
        match self {
            Lang::Python => (
                "worker.py".into(),
                format!(
                    "import sys\nsys.path.insert(0, {lib:?})\nfrom steward_worker import Worker\nw = Worker()\nw.handle(None, lambda job: None)\nw.run()\n"
                ),
            ),
            Lang::Node => (
                "worker.js".into(),
                format!(
                    "const {{ Worker }} = require({lib:?});\nnew Worker().handle(() => undefined).run();\n"
                ),
            ),
        }
    }
}

/// Where the libraries are: `STEWARD_CLIENTS`, a checkout the binary was built in
/// (`target/release/steward` → `clients/`), or the package's /usr/share/steward/clients.
fn clients_dir(exe: &Path) -> Option<PathBuf> {
    let mut candidates = Vec::new();
    if let Some(d) = std::env::var_os("STEWARD_CLIENTS") {
        candidates.push(PathBuf::from(d));
    }
    if let Some(repo) = exe.parent().and_then(Path::parent).and_then(Path::parent) {
        candidates.push(repo.join("clients"));
    }
    candidates.push(PathBuf::from("/usr/share/steward/clients"));
    candidates.into_iter().find(|d| d.join("python").is_dir())
}

/// Jobs per second of no-op jobs through library workers, or why it cannot run here.
pub async fn library_throughput(
    exe: &Path,
    s: &Sizes,
    lang: Lang,
) -> Result<Result<Vec<f64>, String>, Failure> {
    let Some(clients) = clients_dir(exe) else {
        return Ok(Err(
            "the worker libraries were not found (set STEWARD_CLIENTS to their directory)".into(),
        ));
    };
    let library = lang.library(&clients);
    let found = std::process::Command::new(lang.program())
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !found {
        return Ok(Err(format!("{} is not installed", lang.program())));
    }
    let mut rates = Vec::new();
    for _ in 0..s.runs {
        let mut bed = Bed::new(exe)?;
        let (file, text) = lang.script(&library);
        let script = bed.dir.join(file);
        std::fs::write(&script, text).map_err(fail)?;
        bed.write_config(&format!(
            "[queue.b]\n\n[pool.w]\ncommand = [\"{}\", \"{}\"]\ninstances = 4\nqueues = [\"b\"]\nconcurrency = 8\n",
            lang.program(),
            script.display()
        ))?;
        bed.start(&[])?;
        let c = Client::new(&bed.socket());
        // The interpreters take a moment to start and say ready.
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let t0 = Instant::now();
        submit_batches(&c, "b", s.protocol_jobs, json!({})).await?;
        wait_succeeded(&c, "b", s.protocol_jobs as u64, Duration::from_secs(600)).await?;
        rates.push(s.protocol_jobs as f64 / t0.elapsed().as_secs_f64());
        bed.stop();
    }
    Ok(Ok(rates))
}
