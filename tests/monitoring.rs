//! The Grafana dashboard and the Prometheus alerting rules in packaging/monitoring: every
//! metric they use is one a running daemon exports, and the rules pass promtool.

use std::collections::BTreeSet;
use std::process::Command;

use crate::helper::*;

fn monitoring(file: &str) -> String {
    format!("{}/packaging/monitoring/{file}", env!("CARGO_MANIFEST_DIR"))
}

/// `steward_…` names in a query, histogram suffixes taken off.
fn metric_names(expr: &str, into: &mut BTreeSet<String>) {
    let bytes = expr.as_bytes();
    let mut i = 0;
    while let Some(at) = expr[i..].find("steward_") {
        let start = i + at;
        let mut end = start;
        while end < bytes.len() && (bytes[end].is_ascii_alphanumeric() || bytes[end] == b'_') {
            end += 1;
        }
        let name = &expr[start..end];
        let base = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| name.strip_suffix(s))
            .unwrap_or(name);
        into.insert(base.to_string());
        i = end;
    }
}

/// The metric names in a daemon's /metrics (its `# TYPE` lines).
fn exported() -> BTreeSet<String> {
    let env = Env::new();
    let port = free_port();
    env.write_config(&format!(
        "[http]\nlisten = \"127.0.0.1:{port}\"\n\n{}",
        jobs_config(1, "", "")
    ));
    let d = Daemon::start(&env);
    d.wait_running();
    let (_, body) = http_get(port, "/metrics").expect("/metrics");
    body.lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_string)
        .collect()
}

#[test]
fn the_dashboard_and_the_rules_use_only_metrics_the_daemon_exports() {
    let text = std::fs::read_to_string(monitoring("grafana-dashboard.json")).unwrap();
    let dash: serde_json::Value = serde_json::from_str(&text).expect("the dashboard is JSON");
    let mut used = BTreeSet::new();
    let mut titles = Vec::new();
    for p in dash["panels"].as_array().unwrap() {
        if p["type"] == "row" {
            continue;
        }
        titles.push(p["title"].as_str().unwrap().to_string());
        let targets = p["targets"].as_array().unwrap();
        assert!(!targets.is_empty(), "panel {} queries nothing", p["title"]);
        for t in targets {
            metric_names(t["expr"].as_str().unwrap(), &mut used);
        }
    }
    for v in dash["templating"]["list"].as_array().unwrap() {
        if let Some(q) = v["definition"].as_str() {
            metric_names(q, &mut used);
        }
    }
    // What the dashboard is for.
    for want in [
        "Workers by state",
        "Restarts",
        "Queue depth",
        "Wait in the queue (submit to first start)",
        "Throughput by outcome",
        "Run time",
        "Journal commit latency",
        "Reclaimed jobs",
        "OOM kills",
        "Health checks",
    ] {
        assert!(
            titles.iter().any(|t| t == want),
            "no panel {want:?}: {titles:?}"
        );
    }
    let rules = std::fs::read_to_string(monitoring("steward-alerts.yml")).unwrap();
    let mut in_rules = BTreeSet::new();
    for line in rules.lines().filter(|l| !l.trim_start().starts_with('#')) {
        metric_names(line, &mut in_rules);
    }
    let exported = exported();
    let missing: Vec<&String> = used
        .iter()
        .chain(in_rules.iter())
        .filter(|m| !exported.contains(*m))
        .collect();
    assert!(
        missing.is_empty(),
        "used but not exported: {missing:?}\nexported: {exported:?}"
    );
    assert!(used.len() >= 15, "{used:?}");
}

#[test]
fn the_alerting_rules_pass_promtool_check_and_test() {
    for args in [
        vec!["check", "rules", "steward-alerts.yml"],
        vec!["test", "rules", "steward-alerts.test.yml"],
    ] {
        let out = Command::new("promtool")
            .args(&args)
            .current_dir(format!(
                "{}/packaging/monitoring",
                env!("CARGO_MANIFEST_DIR")
            ))
            .output()
            .expect("promtool (apt-get install prometheus)");
        assert!(
            out.status.success(),
            "promtool {args:?}:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
