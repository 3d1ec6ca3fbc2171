//! The environment workers get: env files in systemd's syntax, `${VAR}` expansion, and
//! per-instance values (`{instance}`, `{port}` with `port_base`).

use std::time::Duration;

use crate::helper::*;

fn dump_config(env: &Env, extra: &str) -> String {
    format!(
        "[pool.web]\ncommand = [\"python3\", \"{}\", \"{}\", \"--port={{port}}\", \"--instance={{instance}}\"]\n\
         instances = 3\nport_base = 8081\nstable_after = \"200ms\"\n{extra}\n",
        format_args!("{}/tests/workers/env_dump.py", env!("CARGO_MANIFEST_DIR")),
        env.path("out").display()
    )
}

/// What instance `i` was started with, once it has written it.
fn started_with(env: &Env, i: u32) -> serde_json::Value {
    let path = env.path(&format!("out/{i}.json"));
    wait_for(TIMEOUT, "the worker's record", || {
        std::fs::read_to_string(&path)
            .ok()
            .and_then(|t| serde_json::from_str(&t).ok())
    })
}

#[test]
fn env_files_expansion_and_per_instance_ports_reach_each_worker() {
    let env = Env::new();
    std::fs::create_dir_all(env.path("out")).unwrap();
    std::fs::write(
        env.path("app.env"),
        "# settings of the app\nexport DB_HOST=db.internal\nGREETING=\"hello \\\"world\\\"\"\n\
         LITERAL='${NOT_EXPANDED}'\nOVERRIDDEN=from-file\nLONG=one \\\n  two\n",
    )
    .unwrap();
    std::fs::write(env.path("local.env"), "DB_HOST=db.local\n").unwrap();
    env.write_config(&dump_config(
        &env,
        "env_file = [\"app.env\", \"local.env\", \"-absent.env\"]\n\
         env = { DB = \"${DB_HOST}:5432\", URL = \"${NOT_SET_ANYWHERE:-http://fallback}\", \
         OVERRIDDEN = \"from-config\", PORT = \"{port}\", NAME = \"web-{instance}\", \
         HOME_TOO = \"${HOME}\" }",
    ));
    let d = Daemon::start(&env);
    for i in 0..3u32 {
        let r = started_with(&env, i);
        let e = &r["env"];
        let port = (8081 + i).to_string();
        assert_eq!(e["PORT"], port.as_str(), "{r}");
        assert_eq!(e["STEWARD_PORT"], port.as_str(), "{r}");
        assert_eq!(e["NAME"], format!("web-{i}").as_str());
        assert_eq!(
            r["argv"],
            serde_json::json!([format!("--port={port}"), format!("--instance={i}")])
        );
        // The later file wins over the earlier, and `env` over both.
        assert_eq!(e["DB_HOST"], "db.local");
        assert_eq!(e["DB"], "db.local:5432");
        assert_eq!(e["OVERRIDDEN"], "from-config");
        assert_eq!(e["GREETING"], "hello \"world\"");
        assert_eq!(e["LITERAL"], "${NOT_EXPANDED}");
        assert_eq!(e["LONG"], "one   two");
        assert_eq!(e["URL"], "http://fallback");
        assert!(!e["HOME_TOO"].as_str().unwrap_or("").is_empty(), "{r}");
    }
    // A changed env file is read again on reload, and the workers restart with it.
    std::fs::remove_file(env.path("out/0.json")).unwrap();
    std::fs::write(env.path("local.env"), "DB_HOST=db.new\n").unwrap();
    let out = env.run(&["reload"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r = wait_for(
        Duration::from_secs(30),
        "instance 0 restarted with the new file",
        || {
            std::fs::read_to_string(env.path("out/0.json"))
                .ok()
                .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
        },
    );
    assert_eq!(r["env"]["DB"], "db.new:5432");
    // A broken env file makes the reload fail; nothing changes.
    std::fs::write(
        env.path("local.env"),
        "DB_HOST=db.new\nthis is not an assignment\n",
    )
    .unwrap();
    let out = env.run(&["reload"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("local.env:2: "), "{err}");
    assert_eq!(d.pool("web").workers.len(), 3);
}

#[test]
fn environment_mistakes_are_configuration_errors_at_their_position() {
    let env = Env::new();
    std::fs::write(env.path("bad.env"), "A=1\nB='never closed\n").unwrap();
    let text = "[pool.a]\ncommand = [\"sh\", \"-c\", \"sleep 9\"]\nenv_file = [\"bad.env\", \"missing.env\"]\n\n\
         [pool.b]\ncommand = [\"sh\", \"-c\", \"sleep 9\"]\nenv = { X = \"${UNSET_FOR_SURE}\", Y = \"${STEWARD_INSTANCE}\" }\n\n\
         [pool.c]\ncommand = [\"sh\", \"-c\", \"echo {port}\"]\n\n\
         [pool.d]\ncommand = [\"sh\"]\nport_base = 65535\ninstances = 2\n";
    env.write_config(text);
    let out = env.run(&["check-config"]);
    assert_eq!(out.status.code(), Some(78));
    let err = String::from_utf8_lossy(&out.stderr);
    let file = env.config_path().display().to_string();
    let bad = env.path("bad.env").display().to_string();
    for needle in [
        format!("{file}:8:13: {bad}:2: "),
        format!("{bad}:2: the value of B opens a ' that is never closed"),
        format!("{file}:8:24: env file"),
        "write \"-missing.env\" if it may be absent".to_string(),
        "${UNSET_FOR_SURE} is set neither".to_string(),
        "written {instance} and {port}".to_string(),
        "pool `c` uses {port} but has no port_base".to_string(),
        "reaches port 65536, past 65535".to_string(),
    ] {
        assert!(err.contains(&needle), "missing {needle:?} in:\n{err}");
    }
}

#[test]
fn a_missing_required_variable_parks_the_pool_and_a_reload_with_it_starts_it() {
    let env = Env::new();
    let port = free_port();
    let pools = "[http]\nlisten = \"127.0.0.1:PORT\"\n\n\
                 [pool.api]\ncommand = [\"sh\", \"-c\", \"sleep 60\"]\ninstances = 2\n\
                 env_file = [\"-app.env\"]\nenv = { EMPTY_ONE = \"\" }\n\
                 required_env = [\"CONVEX_URL\", \"EMPTY_ONE\"]\nstable_after = \"200ms\"\n\n\
                 [pool.other]\ncommand = [\"sh\", \"-c\", \"sleep 60\"]\nstable_after = \"200ms\"\n"
        .replace("PORT", &port.to_string());
    env.write_config(&pools);
    // check-config says so, with the position of each name.
    let out = env.run(&["check-config"]);
    assert_eq!(out.status.code(), Some(78));
    let err = String::from_utf8_lossy(&out.stderr);
    let file = env.config_path().display().to_string();
    for needle in [
        format!("{file}:14:17: pool `api` requires CONVEX_URL"),
        format!("{file}:14:31: pool `api` requires EMPTY_ONE"),
    ] {
        assert!(err.contains(&needle), "missing {needle:?} in:\n{err}");
    }
    // The daemon runs the other pool and parks this one: not started, not restarted.
    let d = Daemon::start(&env);
    let p = wait_for(TIMEOUT, "the api pool parked", || {
        let p = d.pool("api");
        p.workers.iter().all(|w| w.state == "failed").then_some(p)
    });
    for w in &p.workers {
        assert_eq!(w.pid, None);
        assert_eq!(
            w.reason.as_deref(),
            Some("missing required environment variables CONVEX_URL, EMPTY_ONE")
        );
    }
    wait_for(TIMEOUT, "the other pool running", || {
        (d.pool("other").workers[0].state == "running").then_some(())
    });
    std::thread::sleep(Duration::from_secs(1));
    assert!(
        d.pool("api")
            .workers
            .iter()
            .all(|w| w.restarts == 0 && w.pid.is_none())
    );
    assert!(
        d.log().contains("worker api/0 is not started: missing required environment variables CONVEX_URL, EMPTY_ONE"),
        "{}",
        d.log()
    );
    let (code, body) = http_get(port, "/health").expect("/health");
    assert_eq!(code, 503, "{body}");
    assert!(
        body.contains("missing required environment variables CONVEX_URL"),
        "{body}"
    );
    // With the variables in place, a reload starts the workers.
    std::fs::write(
        env.path("app.env"),
        "CONVEX_URL=https://example.convex.cloud\n",
    )
    .unwrap();
    env.write_config(&pools.replace("EMPTY_ONE = \"\"", "EMPTY_ONE = \"set\""));
    let out = env.run(&["check-config"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = env.run(&["reload"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    wait_for(Duration::from_secs(30), "the api workers running", || {
        d.pool("api")
            .workers
            .iter()
            .all(|w| w.state == "running")
            .then_some(())
    });
}

#[test]
fn credentials_reach_the_workers_as_variables_and_are_never_logged() {
    let env = Env::new();
    std::fs::create_dir_all(env.path("out")).unwrap();
    let creds = env.path("creds");
    std::fs::create_dir_all(&creds).unwrap();
    std::fs::write(creds.join("api_token"), "s3cr3t-value-9f2\n").unwrap();
    let pools = format!(
        "{}env_from_credentials = {{ API_TOKEN = \"api_token\" }}\nrequired_env = [\"API_TOKEN\"]\n\n\
         [pool.other]\ncommand = [\"sh\", \"-c\", \"sleep 60\"]\n\
         env_from_credentials = {{ OTHER = \"not_there\" }}\n",
        dump_config(&env, "")
    );
    env.write_config(&pools);
    // check-config run by the service manager (with the directory) sees the missing one.
    let out = std::process::Command::new(bin())
        .args(["check-config", "--config"])
        .arg(env.config_path())
        .env("CREDENTIALS_DIRECTORY", &creds)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(78));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("credential \"not_there\""), "{err}");
    let creds_s = creds.display().to_string();
    let d = Daemon::start_with(&env, &[("CREDENTIALS_DIRECTORY", &creds_s)]);
    let r = started_with(&env, 1);
    assert_eq!(r["env"]["API_TOKEN"], "s3cr3t-value-9f2");
    // The pool whose credential is missing is parked, saying which and what to do.
    let w = wait_for(TIMEOUT, "the other pool parked", || {
        let w = d.pool("other").workers.remove(0);
        (w.state == "failed").then_some(w)
    });
    let reason = w.reason.unwrap_or_default();
    assert!(
        reason.contains("cannot read credential") && reason.contains("not_there"),
        "{reason}"
    );
    assert!(d.log().contains("LoadCredential="), "{}", d.log());
    // The value is nowhere in the log or the status.
    let status = String::from_utf8_lossy(&d.cli(&["status", "--json"]).stdout).into_owned();
    assert!(!status.contains("s3cr3t"), "{status}");
    assert!(!d.log().contains("s3cr3t"), "{}", d.log());
}

#[test]
fn an_exec_pool_gets_credentials_and_waits_with_its_jobs_queued_while_one_is_missing() {
    let env = Env::new();
    let creds = env.path("creds");
    std::fs::create_dir_all(&creds).unwrap();
    let dir = env.dir.path().display().to_string();
    env.write_config(&format!(
        "[queue.q]\n\n[pool.x]\nmode = \"exec\"\nqueues = [\"q\"]\n\
         command = [\"sh\", \"-c\", \"cat > /dev/null; printf %s \\\"$TOKEN\\\" > {dir}/got-$STEWARD_JOB_ID\"]\n\
         env_from_credentials = {{ TOKEN = \"tok\" }}\n"
    ));
    let creds_s = creds.display().to_string();
    let d = Daemon::start_with(&env, &[("CREDENTIALS_DIRECTORY", &creds_s)]);
    let id = d.submit("q", "{}", &[]);
    d.wait_log("exec pool x takes no jobs: cannot read credential");
    std::thread::sleep(std::time::Duration::from_millis(500));
    assert_eq!(d.job(id).state, "queued", "no attempt is spent on it");
    // The credential appears (as after `systemctl restart` with LoadCredential=).
    std::fs::write(creds.join("tok"), "t0ken-77c1\n").unwrap();
    d.wait_job(id, "succeeded", TIMEOUT);
    assert_eq!(
        std::fs::read_to_string(env.path(&format!("got-{id}"))).unwrap(),
        "t0ken-77c1"
    );
    assert_eq!(d.job(id).attempts, 1);
    d.wait_log("exec pool x takes jobs again");
    assert!(!d.log().contains("t0ken"), "{}", d.log());
}
