//! `steward bench`: a short run of the CLI scenario, read back as JSON.

use std::process::Command;

use crate::helper::*;

/// Scenario 3 reports the submit rate, the machine's `/bin/true` rate beside it, and the
/// daemon's share of each submit; the share must be a real part of the whole.
#[test]
fn bench_reports_cli_submits_and_the_daemons_share_of_them() {
    let out = Command::new(bin())
        .args(["bench", "--quick", "--only", "3", "--json"])
        .env_remove("STEWARD_SOCKET")
        .output()
        .expect("run steward bench");
    assert!(
        out.status.success(),
        "bench failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rows: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).expect("JSON rows");
    assert_eq!(rows.len(), 2, "{rows:?}");
    let (cli, answer) = (&rows[0], &rows[1]);
    let num = |row: &serde_json::Value, key: &str| row[key].as_f64().expect(key);

    assert!(
        cli["scenario"]
            .as_str()
            .unwrap()
            .starts_with("3. steward submit CLI, 50 ")
    );
    assert_eq!(cli["unit"], "submits/s");
    assert_eq!(cli["target"], ">= 500");
    assert_eq!(cli["runs"], 2);
    let rate = num(cli, "median");
    assert!(
        rate > 0.0 && num(cli, "min") <= rate && rate <= num(cli, "max"),
        "{cli}"
    );
    assert_eq!(cli["met"].as_bool(), Some(rate >= 500.0));
    assert!(
        cli["note"]
            .as_str()
            .unwrap()
            .contains("/bin/true started the same way")
    );

    assert_eq!(answer["unit"], "ms");
    assert_eq!(answer["target"], "");
    assert!(
        answer["met"].is_null(),
        "a report row has no verdict: {answer}"
    );
    let ms = num(answer, "median");
    let per_submit_ms = 1000.0 / rate;
    assert!(
        ms > 0.0 && ms < per_submit_ms,
        "the daemon's answer ({ms} ms) must be part of a whole submit ({per_submit_ms} ms)"
    );
}
