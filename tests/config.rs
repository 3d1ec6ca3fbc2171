//! Invalid configurations are refused with every error, each at file:line:column.

use crate::helper::*;

#[test]
fn invalid_config_exits_78_with_all_errors_positioned() {
    let env = Env::new();
    let text = "[daemon]\nsocket = \"s.sock\"\nshutdown_timeout = \"soon\"\n\n[pool.a]\ncommand = []\ninstances = 0\ncolour = \"blue\"\n\n[pool.b]\ncommand = [\"sh\"]\ninstances = \"four\"\n";
    std::fs::write(env.config_path(), text).unwrap();
    let out = env.run(&["daemon", "--log-format", "text"]);
    assert_eq!(
        out.status.code(),
        Some(78),
        "daemon must exit with EX_CONFIG"
    );
    let err = String::from_utf8_lossy(&out.stderr);
    let file = env.config_path().display().to_string();
    for pos in ["3:20", "6:11", "7:13", "8:1", "12:13"] {
        assert!(
            err.contains(&format!("{file}:{pos}: ")),
            "missing {pos} in:\n{err}"
        );
    }
    assert!(err.contains("has 5 errors"), "{err}");
    assert!(err.contains("unknown key `colour`"), "{err}");
    assert!(
        !env.socket().exists(),
        "nothing may start on an invalid config"
    );

    let out = env.run(&["check-config"]);
    assert_eq!(out.status.code(), Some(78));
    let err2 = String::from_utf8_lossy(&out.stderr);
    assert!(
        err2.contains(&format!(
            "{file}:7:13: `pool.a.instances` must be between 1 and"
        )),
        "{err2}"
    );
}

#[test]
fn each_kind_of_mistake_is_named() {
    let cases: &[(&str, &str)] = &[
        (
            "[pool.a]\ncommand = [\"sh\"]\nbogus = 1\n",
            "3:1: unknown key `bogus`",
        ),
        (
            "[pool.a]\ncommand = [\"sh\"]\ninstances = \"2\"\n",
            "3:13: `pool.a.instances` must be an integer, found a string",
        ),
        (
            "[pool.a]\ncommand = [\"sh\"]\ninstances = 0\n",
            "3:13: `pool.a.instances` must be between 1",
        ),
        (
            "[pool.a]\ncommand = []\n",
            "2:11: `pool.a.command` is empty",
        ),
        (
            "[pool.a]\ncommand = [\"sh\"]\nstop_timeout = \"10 parsecs\"\n",
            "3:16: `pool.a.stop_timeout = \"10 parsecs\"` is not a duration",
        ),
        (
            "[pool.a]\ncommand = [\"sh\"]\nstop_timeout = 10\n",
            "3:16: `pool.a.stop_timeout` must be a duration string",
        ),
        (
            "[pool.a]\ncommand = [\"/nonexistent/worker\"]\n",
            "2:11: program /nonexistent/worker does not exist",
        ),
        (
            "[pool.a]\ncommand = [\"sh\"]\nrestart = \"sometimes\"\n",
            "3:11: restart = \"sometimes\" is not a policy",
        ),
        (
            "[pool.a]\ncommand = [\"sh\"]\nstop_signal = \"SIGFOO\"\n",
            "3:15: stop_signal = \"SIGFOO\" is not a signal name",
        ),
        ("[pool.a\ncommand = [\"sh\"]\n", "1:8: TOML syntax error"),
    ];
    for (text, expected) in cases {
        let env = Env::new();
        std::fs::write(env.config_path(), text).unwrap();
        let out = env.run(&["check-config"]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(78), "{text}\n{err}");
        assert!(
            err.contains(expected),
            "expected {expected:?} for:\n{text}\ngot:\n{err}"
        );
    }
}

#[test]
fn valid_config_checks_ok() {
    let env = Env::new();
    env.write_config("[pool.web]\ncommand = [\"sleep\", \"100\"]\ninstances = 3\n");
    let out = env.run(&["check-config"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("configuration is valid (1 pool: web ×3)"),
        "{text}"
    );
}

#[test]
fn client_without_daemon_says_what_to_do() {
    let env = Env::new();
    env.write_config("");
    let out = env.run(&["status"]);
    assert_eq!(out.status.code(), Some(69));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("is steward running?"), "{err}");
    assert!(err.contains(&env.socket().display().to_string()), "{err}");
}

/// Every duration key, set to a value far beyond any sane one.
const DURATION_KEYS: &[(&str, &str)] = &[
    ("[daemon]", "shutdown_timeout"),
    ("[queue.q]", "timeout"),
    ("[queue.q]", "lease"),
    ("[queue.q]", "retention_succeeded"),
    ("[queue.q]", "retention_failed"),
    ("[queue.q.retry_backoff]", "initial"),
    ("[queue.q.retry_backoff]", "max"),
    ("[pool.w]", "stable_after"),
    ("[pool.w]", "stop_timeout"),
    ("[pool.w]", "start_timeout"),
    ("[pool.w.backoff]", "initial"),
    ("[pool.w.backoff]", "max"),
    ("[pool.w.backoff]", "reset_after"),
    ("[pool.w]", "max_lifetime"),
    ("[pool.w.health]", "interval"),
    ("[pool.w.health]", "timeout"),
    ("[pool.w.health]", "start_period"),
    ("[pool.w]", "watchdog"),
];

fn with_duration(table: &str, key: &str, value: &str) -> String {
    let base = [
        ("[daemon]", "state_dir = \"state\"\nsocket = \"s.sock\"\n"),
        ("[queue.q]", ""),
        ("[queue.q.retry_backoff]", ""),
        (
            "[pool.w]",
            "command = [\"sleep\", \"1000\"]\nqueues = [\"q\"]\n",
        ),
        ("[pool.w.backoff]", ""),
        ("[pool.w.health]", "tcp = \"127.0.0.1:1\"\n"),
    ];
    let mut text = String::new();
    for (t, body) in base {
        text.push_str(t);
        text.push('\n');
        text.push_str(body);
        if t == table {
            text.push_str(&format!("{key} = \"{value}\"\n"));
        }
        text.push('\n');
    }
    text
}

#[test]
fn absurd_durations_are_refused_at_their_position() {
    let env = Env::new();
    for (table, key) in DURATION_KEYS {
        let text = with_duration(table, key, "10000000y");
        std::fs::write(env.config_path(), &text).unwrap();
        let line = text
            .lines()
            .position(|l| l.starts_with(&format!("{key} = ")))
            .unwrap()
            + 1;
        let out = env.run(&["check-config"]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(78), "{table} {key}:\n{err}");
        assert!(
            err.contains(&format!(":{line}:")) && err.contains("at most 100 years"),
            "{table} {key}:\n{err}"
        );
    }
    // The largest value allowed is accepted, and the daemon runs on it.
    let text = with_duration("[queue.q]", "timeout", "100years");
    std::fs::write(env.config_path(), &text).unwrap();
    let out = env.run(&["check-config"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn a_reload_with_an_absurd_duration_is_refused_and_the_daemon_lives() {
    let env = Env::new();
    std::fs::write(env.config_path(), with_duration("", "", "")).unwrap();
    let d = Daemon::start(&env);
    for (table, key) in DURATION_KEYS {
        std::fs::write(env.config_path(), with_duration(table, key, "10000000y")).unwrap();
        let out = d.cli(&["reload", "--config", env.config_path().to_str().unwrap()]);
        assert_eq!(
            out.status.code(),
            Some(78),
            "{table} {key}: {}",
            String::from_utf8_lossy(&out.stdout)
        );
    }
    assert_eq!(d.status().state, "running");
}

#[test]
fn values_the_kernel_would_refuse_are_refused_at_their_position() {
    // Each would pass a TOML parser and then fail at every spawn.
    let cases: &[(&str, &str)] = &[
        (
            "[pool.a]\ncommand = [\"sh\", \"-c\", \"echo a\\u0000b\"]\n",
            "2:24: `pool.a.command` argument 3 contains a NUL byte",
        ),
        (
            "[pool.a]\ncommand = [\"s\\u0000h\"]\n",
            "2:12: `pool.a.command` argument 1 contains a NUL byte",
        ),
        (
            "[pool.a]\ncommand = [\"sh\"]\nenv = { A = \"x\\u0000y\" }\n",
            "3:13: `pool.a.env.A` contains a NUL byte",
        ),
        (
            "[pool.a]\ncommand = [\"sh\"]\nenv = { \"A=B\" = \"x\" }\n",
            "3:9: environment variable name `A=B` contains `=`",
        ),
        (
            "[pool.a]\ncommand = [\"sh\"]\nenv = { \"\" = \"x\" }\n",
            "3:9: an environment variable name is empty",
        ),
        (
            "[pool.a]\ncommand = [\"sh\"]\nenv = { \"A\\u0000\" = \"x\" }\n",
            "3:9: environment variable name `A\\0` contains a NUL byte",
        ),
        (
            "[pool.a]\ncommand = [\"sh\"]\nworking_dir = \"/tmp\\u0000x\"\n",
            "3:15: `pool.a.working_dir` contains a NUL byte",
        ),
        (
            "[daemon]\nstate_dir = \"st\\u0000ate\"\n",
            "2:13: `daemon.state_dir` contains a NUL byte",
        ),
    ];
    for (text, expected) in cases {
        let env = Env::new();
        std::fs::write(env.config_path(), text).unwrap();
        let out = env.run(&["check-config"]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(78), "{text}\n{err}");
        assert!(
            err.contains(expected),
            "expected {expected:?} for:\n{text}\ngot:\n{err}"
        );
    }
}

#[test]
fn a_user_without_access_gets_exit_77_and_what_to_do() {
    let env = Env::new();
    env.write_config("");
    let d = Daemon::start(&env);
    // The socket is 0660 and root's; `nobody` is not in its group.
    let out = std::process::Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            bin(),
            "status",
            "--socket",
        ])
        .arg(&d.socket)
        .output()
        .expect("setpriv (util-linux)");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(77), "{err}");
    assert!(
        err.contains("permission denied") && err.contains("group steward"),
        "{err}"
    );
}

/// A file of `n` unknown keys, about 15 bytes each.
fn many_unknown_keys(n: usize) -> String {
    let mut text = String::from(
        "[daemon]\nstate_dir = \"state\"\nsocket = \"s.sock\"\n\n[pool.w]\ncommand = [\"sleep\", \"1000\"]\n",
    );
    for i in 0..n {
        text.push_str(&format!("bogus{i} = 1\n"));
    }
    text
}

#[test]
fn a_huge_bad_file_is_reported_quickly_and_in_part() {
    let env = Env::new();
    // 70,000 unknown keys (about 1 MB): every one an error.
    std::fs::write(env.config_path(), many_unknown_keys(70_000)).unwrap();
    let t0 = std::time::Instant::now();
    let out = env.run(&["check-config"]);
    let took = t0.elapsed();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(78));
    assert!(
        took < std::time::Duration::from_secs(5),
        "check-config took {took:?}"
    );
    assert!(
        err.contains("has 70000 errors"),
        "{}",
        &err[..err.len().min(500)]
    );
    assert!(
        err.contains(":7:1: unknown key `bogus0`"),
        "{}",
        &err[..500]
    );
    assert!(
        err.contains("and 69900 more"),
        "{}",
        &err[err.len().saturating_sub(500)..]
    );
    assert!(err.lines().count() < 120, "{} lines", err.lines().count());
}

#[test]
fn a_reload_of_a_huge_bad_file_does_not_stop_the_loop() {
    let env = Env::new();
    std::fs::write(env.config_path(), many_unknown_keys(0)).unwrap();
    let notify = NotifySocket::bind(env.path("notify.sock"));
    let path = notify.path.display().to_string();
    let d = Daemon::spawn(
        &env,
        &[("NOTIFY_SOCKET", &path), ("WATCHDOG_USEC", "400000")],
        &["--log-format", "text"],
    );
    d.wait_running();
    std::fs::write(env.config_path(), many_unknown_keys(70_000)).unwrap();
    let t0 = std::time::Instant::now();
    let out = d.cli(&["reload"]);
    assert_eq!(out.status.code(), Some(78));
    // Meanwhile the loop kept turning: no gap between watchdog pings of a second.
    let pings: Vec<std::time::Instant> = notify
        .with_line("WATCHDOG=1")
        .into_iter()
        .filter(|t| *t >= t0)
        .collect();
    for w in pings.windows(2) {
        let gap = w[1] - w[0];
        assert!(
            gap < std::time::Duration::from_secs(1),
            "watchdog gap of {gap:?}"
        );
    }
    assert_eq!(d.status().state, "running");
}

#[test]
fn a_huge_configuration_file_is_refused_before_it_is_read() {
    let env = Env::new();
    let mut text = String::from("[daemon]\nstate_dir = \"state\"\n");
    text.push_str(&"# padding\n".repeat(500_000));
    std::fs::write(env.config_path(), text).unwrap();
    let out = env.run(&["check-config"]);
    assert_eq!(out.status.code(), Some(78));
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(
        said.contains("more than the 4194304 steward reads"),
        "{said}"
    );
}
