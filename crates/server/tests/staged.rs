//! Staged rollouts with the real binary: a release published with a plan starts at its canary
//! stage, advances by itself once that stage stayed healthy for the soak time, and halts
//! instead when its canaries fail (the halt rule's default minimum of attempts follows the
//! stage's size).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use cms_protocol::{AgentState, RegisterResponse, UpdateStep};
use common::{Options, Server, Store, progress, send, wait_until};
use reqwest::StatusCode;
use serde_json::Value;

/// `cms-server ARGS` against the server's store: exit code and the JSON it printed (or its
/// stderr as a string).
async fn cli(server: &Server, store: &Store, args: &[&str]) -> (Option<i32>, Value) {
    let output = common::command(&args[..2], &server.data_dir, store)
        .args(&args[2..])
        .output()
        .await
        .unwrap();
    let json = serde_json::from_slice(&output.stdout)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&output.stderr).into_owned()));
    (output.status.code(), json)
}

async fn status(server: &Server, store: &Store) -> Value {
    let (code, status) = cli(server, store, &["rollout", "status", "--version", "2.0.0"]).await;
    assert_eq!(code, Some(0), "{status}");
    status
}

/// The version the agent is offered at 1.0.0, if any.
async fn offered(server: &Server, agent: &RegisterResponse) -> Option<String> {
    let path = "/api/v1/agent/update?platform=linux-x86_64&version=1.0.0";
    let response = server
        .http
        .get(server.url(path))
        .bearer_auth(&agent.agent_token)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let body: Value = response.json().await.unwrap();
    body["update"]["version"].as_str().map(str::to_owned)
}

/// A server looking at its plans every second, with six agents on 1.0.0, and 2.0.0 published
/// with `stages` (soak `soak`) and nothing else.
async fn fleet_with_plan(
    dir: &std::path::Path,
    store: &Store,
    stages: &str,
    soak: &str,
) -> (Server, Vec<RegisterResponse>) {
    let options = Options {
        args: vec!["--plan-check-secs".into(), "1".into()],
        ..Options::default()
    };
    let server = Server::start(dir, store, &options).await;
    let mut agents = Vec::new();
    for i in 0..6 {
        agents.push(server.register_ok(&format!("host-{i}")).await);
    }
    let files = common::inputs(&server.data_dir);
    let extra = ["--stages", stages, "--stage-soak", soak];
    let (code, _, stderr) =
        common::publish_as_given(&server.data_dir, store, "2.0.0", &files, &extra).await;
    assert_eq!(code, Some(0), "{stderr}");
    (server, agents)
}

/// The agents offered 2.0.0 now (each check is recorded as an offer).
async fn canaries<'a>(
    server: &Server,
    agents: &'a [RegisterResponse],
) -> Vec<&'a RegisterResponse> {
    let mut offered_to = Vec::new();
    for agent in agents {
        if offered(server, agent).await.as_deref() == Some("2.0.0") {
            offered_to.push(agent);
        }
    }
    offered_to
}

async fn audit_actions(server: &Server) -> Vec<(String, String, String)> {
    let entries: Vec<Value> = server.operator_json("/api/v1/audit?limit=1000").await;
    entries
        .iter()
        .map(|e| {
            let text = |k: &str| e[k].as_str().unwrap_or_default().to_owned();
            (text("actor"), text("action"), text("target"))
        })
        .collect()
}

#[tokio::test]
async fn a_healthy_canary_stage_advances_by_itself_after_the_soak() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::Sqlite;
    let (server, agents) = fleet_with_plan(dir.path(), &store, "3,100%", "2s").await;
    let first = status(&server, &store).await;
    assert_eq!(first["plan"]["stage"], 1, "{first}");
    assert_eq!(first["plan"]["stages"], serde_json::json!(["3", "100%"]));
    assert_eq!(first["plan"]["soak_secs"], 2);
    let canaries = canaries(&server, &agents).await;
    assert!(
        (3..6).contains(&canaries.len()),
        "the first stage is three agents (more only on a cohort tie): {first}"
    );
    assert_eq!(
        first["halt"]["min_attempts"],
        canaries.len(),
        "the default minimum of attempts is the stage's size: {first}"
    );

    // The canaries update and run 2.0.0: the stage is healthy, and after the soak the plan
    // moves on by itself to 100 %.
    for agent in &canaries {
        send(
            &server,
            &agent.agent_token,
            vec![progress("2.0.0", UpdateStep::Offered, None)],
        )
        .await;
        let response = server.post_status(&agent.agent_token, AgentState::Idle, "2.0.0");
        assert_eq!(response.await.status(), StatusCode::NO_CONTENT);
        send(
            &server,
            &agent.agent_token,
            vec![progress("2.0.0", UpdateStep::Healthy, None)],
        )
        .await;
    }
    // (The status is read in several queries: wait for both the stage and its percentage.)
    let advanced = wait_until("the plan's second stage at 100 %", 60, || async {
        let status = status(&server, &store).await;
        (status["plan"]["stage"] == 2 && status["rollout_percent"] == 100).then_some(status)
    })
    .await;
    assert_eq!(
        advanced["halt"]["min_attempts"], 6,
        "the rule follows the stage's size: {advanced}"
    );
    assert_eq!(advanced["plan"]["done"], true, "{advanced}");
    assert_eq!(advanced["paused"], false);
    let started = advanced["plan"]["stage_started_at"].as_str().unwrap();
    assert!(started > first["plan"]["stage_started_at"].as_str().unwrap());
    for agent in &agents {
        let on_it = canaries.iter().any(|c| c.agent_id == agent.agent_id);
        if !on_it {
            assert_eq!(offered(&server, agent).await.as_deref(), Some("2.0.0"));
        }
    }
    let audit = audit_actions(&server).await;
    assert!(
        audit
            .iter()
            .any(|(actor, action, target)| actor == "server:plan"
                && action == "rollout.advance"
                && target == "2.0.0/linux-x86_64 stage=2 percent=100"),
        "{audit:?}"
    );
    // The API shows the same plan.
    let listed: Vec<Value> = server.operator_json("/api/v1/rollouts").await;
    assert_eq!(listed[0]["plan"]["stage"], 2, "{listed:?}");
    server.stop().await;
}

#[tokio::test]
async fn a_failing_canary_stage_halts_and_never_advances_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    failing_canary_halts(dir.path(), Store::Sqlite).await;
}

#[tokio::test]
async fn a_failing_canary_stage_halts_and_never_advances_on_postgres() {
    let Some(schema) = common::postgres_schema("staged_canary_on_postgres").await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    failing_canary_halts(dir.path(), Store::Postgres(schema.server_url.clone())).await;
    schema.drop_schema().await;
}

async fn failing_canary_halts(dir: &std::path::Path, store: Store) {
    let (server, agents) = fleet_with_plan(dir, &store, "3,100%", "1s").await;
    let canaries = canaries(&server, &agents).await;
    assert!((3..6).contains(&canaries.len()), "{}", canaries.len());
    // Every canary's new version fails and is rolled back.
    for agent in &canaries {
        let reports = vec![
            progress("2.0.0", UpdateStep::Offered, None),
            progress("2.0.0", UpdateStep::HandedOver, None),
            progress("2.0.0", UpdateStep::RolledBack, None),
        ];
        send(&server, &agent.agent_token, reports).await;
    }
    let halted = wait_until("the halt", 30, || async {
        let status = status(&server, &store).await;
        status["halted_at"].is_string().then_some(status)
    })
    .await;
    assert_eq!(halted["paused"], true, "{halted}");
    assert_eq!(halted["funnel"]["rolled_back"], canaries.len(), "{halted}");
    let percent = halted["rollout_percent"].clone();

    // Two more looks at the plans after the halt: still at the canary stage, nobody else
    // offered.
    let looks = |log: &str| log.matches("rollout plans looked at").count();
    let before = looks(&server.log());
    wait_until("two more looks at the plans", 30, || async {
        (looks(&server.log()) >= before + 2).then_some(())
    })
    .await;
    let after = status(&server, &store).await;
    assert_eq!(after["plan"]["stage"], 1, "{after}");
    assert_eq!(after["rollout_percent"], percent, "{after}");
    assert_eq!(after["plan"]["next_advance_at"], Value::Null, "{after}");
    for agent in &agents {
        assert_eq!(
            offered(&server, agent).await,
            None,
            "a halted release is offered to nobody"
        );
    }
    let audit = audit_actions(&server).await;
    assert!(
        !audit
            .iter()
            .any(|(_, action, _)| action == "rollout.advance"),
        "{audit:?}"
    );
    assert!(
        audit
            .iter()
            .any(|(actor, action, _)| actor == "server:halt" && action == "rollout.halt"),
        "{audit:?}"
    );
    resume_needs_a_reason(&server, &store, canaries.len()).await;
    server.stop().await;
}

/// Resuming the halted 2.0.0 is refused without a reason (command line and API); with one it
/// is audited, and the halt stays in the release's history with the reason.
async fn resume_needs_a_reason(server: &Server, store: &Store, failed: usize) {
    let resume = ["rollout", "resume", "--version", "2.0.0"];
    let (code, refused) = cli(server, store, &resume).await;
    assert_eq!(code, Some(2), "{refused}");
    assert!(
        refused.as_str().unwrap().contains("needs a reason"),
        "{refused}"
    );
    let response = server
        .operator(reqwest::Method::POST, "/api/v1/rollouts/linux-x86_64/2.0.0")
        .json(&serde_json::json!({"action": "resume", "reason": "  "}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    let still = status(server, store).await;
    assert_eq!(still["paused"], true, "{still}");
    let halts = still["halts"].as_array().unwrap();
    assert_eq!(halts.len(), 1, "{still}");
    let why = halts[0]["why"].as_str().unwrap();
    assert!(
        why.starts_with(&format!(
            "{failed} of {failed} attempts failed or rolled back"
        )),
        "{why}"
    );
    assert_eq!(halts[0]["resumed_at"], Value::Null);

    let reason = ["--reason", "canary hosts had a bad disk image"];
    let (code, resumed) = cli(server, store, &[&resume[..], &reason[..]].concat()).await;
    assert_eq!(code, Some(0), "{resumed}");
    assert_eq!(resumed["paused"], false, "{resumed}");
    assert_eq!(resumed["halted_at"], Value::Null, "{resumed}");
    let halt = &resumed["halts"][0];
    assert_eq!(halt["why"], why, "{resumed}");
    assert_eq!(halt["reason"], "canary hosts had a bad disk image");
    assert!(halt["resumed_at"].is_string(), "{resumed}");
    assert!(
        halt["resumed_by"].as_str().unwrap().starts_with("cli"),
        "{resumed}"
    );
    let audit = audit_actions(server).await;
    let resumes: Vec<_> = audit
        .iter()
        .filter(|(_, action, _)| action == "rollout.resume")
        .map(|(_, _, target)| target.as_str())
        .collect();
    assert!(
        resumes.contains(&"2.0.0/linux-x86_64 reason=canary hosts had a bad disk image"),
        "{audit:?}"
    );
    assert_eq!(resumes.len(), 3, "two refused, one done: {audit:?}");
}

#[tokio::test]
async fn publish_refuses_a_bad_plan_and_a_fixed_rollout_has_none() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::Sqlite;
    let server = Server::start(dir.path(), &store, &Options::default()).await;
    let files = common::inputs(&server.data_dir);
    for bad in [
        &["--stages", "0%,100%"][..],
        &["--stages", "x"],
        &["--stage-soak", "3w"],
        &["--rollout", "50", "--stages", "1%,100%"],
        &["--canary-group", "no spaces"],
    ] {
        let (code, _, stderr) =
            common::publish_as_given(&server.data_dir, &store, "2.0.0", &files, bad).await;
        assert_eq!(code, Some(2), "{bad:?}: {stderr}");
    }
    let fixed = ["--rollout", "40", "--halt-percent", "10"];
    let (code, _, stderr) =
        common::publish_as_given(&server.data_dir, &store, "2.0.0", &files, &fixed).await;
    assert_eq!(code, Some(0), "{stderr}");
    let status = status(&server, &store).await;
    assert_eq!(status["plan"], Value::Null, "{status}");
    assert_eq!(status["rollout_percent"], 40);
    assert_eq!(status["halt"]["percent"], 10);
    assert_eq!(
        status["halt"]["min_attempts"], 1,
        "no agents yet: the rule needs one"
    );
    // The defaults: a staged plan.
    let (code, _, stderr) =
        common::publish_as_given(&server.data_dir, &store, "2.1.0", &files, &[]).await;
    assert_eq!(code, Some(0), "{stderr}");
    let (_, staged) = cli(
        &server,
        &store,
        &["rollout", "status", "--version", "2.1.0"],
    )
    .await;
    assert_eq!(
        staged["plan"]["stages"],
        serde_json::json!(["1%", "10%", "50%", "100%"]),
        "{staged}"
    );
    assert_eq!(staged["plan"]["soak_secs"], 1800);
    assert_eq!(
        staged["rollout_percent"], 1,
        "an empty fleet: the stage's own share"
    );
    assert_eq!(staged["superseded"], false);
    // 3.0.0 to everyone: 2.0.0 and 2.1.0 are superseded, offered to nobody.
    let everyone = ["--rollout", "100"];
    let (code, _, stderr) =
        common::publish_as_given(&server.data_dir, &store, "3.0.0", &files, &everyone).await;
    assert_eq!(code, Some(0), "{stderr}");
    let listed: Vec<Value> = server.operator_json("/api/v1/rollouts").await;
    let superseded: Vec<(&str, bool)> = listed
        .iter()
        .map(|r| {
            (
                r["version"].as_str().unwrap(),
                r["superseded"].as_bool().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        superseded,
        [("3.0.0", false), ("2.1.0", true), ("2.0.0", true)],
        "{listed:?}"
    );
    server.stop().await;
}

#[tokio::test]
async fn the_funnel_counts_each_attempt_once_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    each_attempt_once(dir.path(), Store::Sqlite).await;
}

#[tokio::test]
async fn the_funnel_counts_each_attempt_once_on_postgres() {
    let Some(schema) = common::postgres_schema("honest_funnel_on_postgres").await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    each_attempt_once(dir.path(), Store::Postgres(schema.server_url.clone())).await;
    schema.drop_schema().await;
}

/// Six agents offered 2.0.0, one of each end: healthy, rolled back (and then declining the
/// re-offers), failed at verifying, refused without trying, in progress, and one healthy that
/// reported its steps twice. Each counts once; the ends add up to the attempts.
async fn each_attempt_once(dir: &std::path::Path, store: Store) {
    let server = Server::start(dir, &store, &Options::default()).await;
    let mut agents = Vec::new();
    for i in 0..6 {
        agents.push(server.register_ok(&format!("host-{i}")).await);
    }
    let files = common::inputs(&server.data_dir);
    let extra = ["--rollout", "100", "--halt-min-attempts", "100"];
    let (code, _, stderr) =
        common::publish_as_given(&server.data_dir, &store, "2.0.0", &files, &extra).await;
    assert_eq!(code, Some(0), "{stderr}");
    for agent in &agents {
        assert_eq!(offered(&server, agent).await.as_deref(), Some("2.0.0"));
    }
    let step = |s, failed: Option<&str>| progress("2.0.0", s, failed);
    let healthy = |agent: &RegisterResponse| {
        let token = agent.agent_token.clone();
        let server = &server;
        async move {
            let reports = vec![
                step(UpdateStep::Offered, None),
                step(UpdateStep::Downloading, None),
                step(UpdateStep::Verified, None),
                step(UpdateStep::HandedOver, None),
            ];
            send(server, &token, reports).await;
            let response = server.post_status(&token, AgentState::Idle, "2.0.0");
            assert_eq!(response.await.status(), StatusCode::NO_CONTENT);
            send(server, &token, vec![step(UpdateStep::Healthy, None)]).await;
        }
    };
    healthy(&agents[0]).await;
    healthy(&agents[5]).await;
    healthy(&agents[5]).await;
    let rolled_back = vec![
        step(UpdateStep::Offered, None),
        step(UpdateStep::HandedOver, None),
        step(UpdateStep::RolledBack, None),
        step(UpdateStep::Refused, None),
        step(UpdateStep::Refused, None),
    ];
    send(&server, &agents[1].agent_token, rolled_back).await;
    let failed = vec![
        step(UpdateStep::Offered, None),
        step(UpdateStep::Failed, Some("verifying")),
    ];
    send(&server, &agents[2].agent_token, failed).await;
    send(
        &server,
        &agents[3].agent_token,
        vec![step(UpdateStep::Refused, None)],
    )
    .await;
    send(
        &server,
        &agents[4].agent_token,
        vec![step(UpdateStep::Downloading, None)],
    )
    .await;

    let funnel = status(&server, &store).await["funnel"].clone();
    let ends = &funnel["ends"];
    assert_eq!(funnel["attempts"], 6, "{funnel}");
    let sum: i64 = ["healthy", "rolled_back", "failed", "refused", "in_progress"]
        .iter()
        .map(|k| ends[k].as_i64().unwrap())
        .sum();
    assert_eq!(sum, 6, "the ends add up to the attempts: {funnel}");
    assert_eq!(ends["healthy"], 2, "{funnel}");
    assert_eq!(ends["rolled_back"], 1, "{funnel}");
    assert_eq!(ends["failed"], 1, "{funnel}");
    assert_eq!(ends["refused"], 1, "refused without trying only: {funnel}");
    assert_eq!(ends["in_progress"], 1, "{funnel}");
    // The page's fields agree: the agent that rolled back and then declined is not refused.
    assert_eq!(funnel["refused"], 1, "{funnel}");
    assert_eq!(funnel["rolled_back"], 1, "{funnel}");
    assert_eq!(funnel["failed_by_step"]["verifying"], 1, "{funnel}");
    server.stop().await;
}
