//! Start-up and shutdown: a closed or wrong database is a clear error and a non-zero exit; the
//! fixed variant refuses a database that already breaks its invariant; SIGTERM stops cleanly.

use std::time::Duration;

use crate::support::{Backend, Http, Launch, Stubs, TestDb};

fn launch_with(database_url: &str, stubs: &Stubs) -> Launch {
    Launch {
        variant: "naive",
        database_url: database_url.to_string(),
        deps_url: stubs.url.clone(),
        extra: Vec::new(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_or_unsupported_databases_fail_at_start() {
    let stubs = Stubs::start(Duration::ZERO).await;
    let cases = [
        (
            "postgres://nobody@127.0.0.1:1/nothing",
            "cannot open database",
        ),
        (
            "sqlite:/nonexistent-dir/for/sure/x.db",
            "cannot open database",
        ),
        ("mysql://127.0.0.1/x", "unsupported database URL"),
    ];
    for (url, needle) in cases {
        let (code, stderr) = launch_with(url, &stubs).start_failure();
        assert_eq!(code, Some(1), "{url}: {stderr}");
        assert!(stderr.contains(needle), "{url}: {stderr}");
    }
    let (code, stderr) = launch_with("sqlite::memory:", &stubs)
        .arg("--pool-size")
        .arg("0")
        .start_failure();
    assert_eq!(code, Some(1));
    assert!(stderr.contains("--pool-size"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fixed_refuses_a_database_with_duplicates() {
    let db = TestDb::fresh(Backend::Sqlite).await.expect("sqlite");
    let stubs = Stubs::start(Duration::from_millis(150)).await;
    let http = Http::new();
    {
        let naive = Launch::new("naive", &db, &stubs).start();
        let _ = tokio::join!(
            http.create(&naive.url, "acct_1", "2026-01"),
            http.create(&naive.url, "acct_1", "2026-01"),
        );
    }
    assert_eq!(db.count("SELECT COUNT(*) FROM invoices").await, 2);
    let (code, stderr) = Launch::new("fixed", &db, &stubs).start_failure();
    assert_eq!(code, Some(1));
    assert!(
        stderr.contains("already holds duplicate invoices"),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_stops_cleanly() {
    let db = TestDb::fresh(Backend::Sqlite).await.expect("sqlite");
    let stubs = Stubs::start(Duration::ZERO).await;
    let mut service = Launch::new("fixed", &db, &stubs).start();
    let reply = Http::new().create(&service.url, "acct_1", "2026-01").await;
    assert_eq!(reply.status, 201, "{}\nlog:\n{}", reply.body, service.log());
    assert_eq!(service.terminate(), Some(0), "log:\n{}", service.log());
    assert!(service.log().contains("\"event\":\"service.stopped\""));
}
