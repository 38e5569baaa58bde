//! The seed's race, for both variants: two callers for one account and period overlapping inside
//! a slow usage call, through the API twice and through the API and the worker.

use std::time::Duration;

use crate::support::{Backend, Http, Launch, Stubs, TestDb, eventually, on_both_backends};

on_both_backends!(
    naive_duplicates_when_two_creates_overlap,
    fixed_holds_when_two_creates_overlap,
    naive_duplicates_when_api_and_worker_overlap,
    fixed_holds_when_api_and_worker_overlap,
    fixed_two_replicas_drain_a_batch_exactly_once,
);

/// The seed's test, literally: usage takes 150 ms and two creates for acct_123/2026-01 run at
/// once. The naive handler's find-then-insert lets both through.
async fn naive_duplicates_when_two_creates_overlap(backend: Backend) {
    let Some(db) = TestDb::fresh(backend).await else {
        return;
    };
    let stubs = Stubs::start(Duration::from_millis(150)).await;
    let service = Launch::new("naive", &db, &stubs).start();
    let http = Http::new();

    let (a, b) = tokio::join!(
        http.create(&service.url, "acct_123", "2026-01"),
        http.create(&service.url, "acct_123", "2026-01"),
    );
    assert_eq!((a.status, b.status), (201, 201), "{a:?} {b:?}");
    assert_ne!(
        a.body["id"], b.body["id"],
        "each caller made its own invoice"
    );

    let invoices = http.list(&service.url, "acct_123", "2026-01").await;
    assert_eq!(
        invoices.len(),
        2,
        "the seed's duplicate invoice: {invoices:?}"
    );
    let emails = stubs.deliveries();
    assert_eq!(emails.len(), 2, "and the duplicate email: {emails:?}");
    assert!(emails.iter().all(|e| e.idempotency_key.is_none()));
}

/// The fix: both callers are answered 2xx with the same invoice, one row exists, and the relay
/// sends one email keyed by the invoice id.
async fn fixed_holds_when_two_creates_overlap(backend: Backend) {
    let Some(db) = TestDb::fresh(backend).await else {
        return;
    };
    let stubs = Stubs::start(Duration::from_millis(150)).await;
    let service = Launch::new("fixed", &db, &stubs).start();
    let http = Http::new();

    let (a, b) = tokio::join!(
        http.create(&service.url, "acct_123", "2026-01"),
        http.create(&service.url, "acct_123", "2026-01"),
    );
    let mut statuses = [a.status, b.status];
    statuses.sort();
    assert_eq!(statuses, [200, 201], "{a:?} {b:?}");
    assert_eq!(a.body["id"], b.body["id"]);
    assert_eq!(a.body["total_cents"], 4200);
    let calls = stubs.usage_calls();
    assert_eq!(calls.len(), 2, "both really overlapped in the usage call");
    assert!(
        calls
            .iter()
            .all(|c| c.account_id == "acct_123" && c.period == "2026-01")
    );

    let invoices = http.list(&service.url, "acct_123", "2026-01").await;
    assert_eq!(invoices.len(), 1, "{invoices:?}");

    let id = a.body["id"].as_str().expect("id").to_string();
    assert!(
        eventually(Duration::from_secs(10), || async {
            !stubs.deliveries().is_empty()
        })
        .await,
        "the relay never delivered the email"
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    let emails = stubs.deliveries();
    assert_eq!(emails.len(), 1, "{emails:?}");
    assert_eq!(emails[0].invoice_id, id);
    assert_eq!(emails[0].idempotency_key.as_deref(), Some(id.as_str()));
}

/// The API and the reconciliation worker enter the same code path for one account at once
/// (the seed's production table: "API calls, webhooks, and workers overlap").
async fn api_and_worker_overlap(variant: &'static str, backend: Backend) -> Option<(Stubs, usize)> {
    let db = TestDb::fresh(backend).await?;
    // Wider than the seed's 150 ms so the overlap survives a busy CI machine; the worker picks
    // the job up within milliseconds of the enqueue.
    let stubs = Stubs::start(Duration::from_millis(400)).await;
    let service = Launch::new(variant, &db, &stubs).start();
    let http = Http::new();

    let (job, api) = tokio::join!(
        http.reconcile(&service.url, "2026-01", &["acct_7"]),
        http.create(&service.url, "acct_7", "2026-01"),
    );
    assert_eq!(job.status, 202, "{job:?}");
    assert_eq!(job.body["enqueued"], 1);
    assert!([200, 201].contains(&api.status), "{api:?}");

    let settled = eventually(Duration::from_secs(10), || async {
        db.count("SELECT COUNT(*) FROM jobs WHERE state = 'done'")
            .await
            == 1
    })
    .await;
    assert!(settled, "the job never finished; log:\n{}", service.log());
    let invoices = http.list(&service.url, "acct_7", "2026-01").await;
    let by_worker = db
        .count("SELECT COUNT(*) FROM invoices WHERE created_by = 'worker'")
        .await;
    if variant == "naive" {
        assert_eq!(by_worker, 1, "the worker made its own invoice");
    }
    // Let the relay (fixed) or nothing (naive) finish sending.
    tokio::time::sleep(Duration::from_millis(500)).await;
    Some((stubs, invoices.len()))
}

async fn naive_duplicates_when_api_and_worker_overlap(backend: Backend) {
    let Some((stubs, invoices)) = api_and_worker_overlap("naive", backend).await else {
        return;
    };
    assert_eq!(invoices, 2, "API and worker each created one");
    assert_eq!(stubs.deliveries().len(), 2);
}

async fn fixed_holds_when_api_and_worker_overlap(backend: Backend) {
    let Some((stubs, invoices)) = api_and_worker_overlap("fixed", backend).await else {
        return;
    };
    assert_eq!(invoices, 1);
    assert_eq!(
        stubs.usage_calls().len(),
        2,
        "both callers reached the usage call"
    );
    let emails = stubs.deliveries();
    assert_eq!(emails.len(), 1, "{emails:?}");
}

/// Two replicas share one queue and one outbox: every job is claimed once (SKIP LOCKED on
/// PostgreSQL, the atomic claim on SQLite) and every invoice gets exactly one email.
async fn fixed_two_replicas_drain_a_batch_exactly_once(backend: Backend) {
    let Some(db) = TestDb::fresh(backend).await else {
        return;
    };
    let stubs = Stubs::start(Duration::from_millis(5)).await;
    let launch = Launch::new("fixed", &db, &stubs);
    let first = launch.clone().arg("--version").arg("v1").start();
    let second = launch.arg("--version").arg("v2").start();
    let http = Http::new();

    let accounts: Vec<String> = (0..40).map(|i| format!("acct_{i}")).collect();
    let refs: Vec<&str> = accounts.iter().map(String::as_str).collect();
    let reply = http.reconcile(&first.url, "2026-02", &refs).await;
    assert_eq!(reply.status, 202, "{reply:?}");
    assert_eq!(reply.body["job_ids"].as_array().map(Vec::len), Some(40));

    let done = eventually(Duration::from_secs(20), || async {
        db.count("SELECT COUNT(*) FROM jobs WHERE state = 'done'")
            .await
            == 40
    })
    .await;
    assert!(
        done,
        "jobs left undone; logs:\n{}\n{}",
        first.log(),
        second.log()
    );
    let delivered = eventually(Duration::from_secs(10), || async {
        stubs.deliveries().len() >= 40
    })
    .await;
    assert!(delivered, "emails missing: {}", stubs.deliveries().len());
    tokio::time::sleep(Duration::from_millis(300)).await;

    assert_eq!(db.count("SELECT COUNT(*) FROM invoices").await, 40);
    assert_eq!(
        db.count("SELECT COUNT(*) FROM jobs WHERE attempts <> 1")
            .await,
        0
    );
    assert_eq!(stubs.usage_calls().len(), 40, "no job ran twice");
    let mut keys: Vec<String> = stubs
        .deliveries()
        .into_iter()
        .map(|d| d.idempotency_key.expect("keyed"))
        .collect();
    keys.sort();
    keys.dedup();
    assert_eq!(keys.len(), 40);
    assert_eq!(stubs.deliveries().len(), 40);
}
