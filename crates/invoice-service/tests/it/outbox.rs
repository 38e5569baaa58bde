//! The transactional outbox survives a crash between sending an email and marking it sent: the
//! restarted relay sends again, with the same `Idempotency-Key`, and then stops.

use std::time::Duration;

use crate::support::{Backend, Http, Launch, Stubs, TestDb, eventually, on_both_backends};

on_both_backends!(relay_redelivers_after_a_crash_with_the_same_key);

async fn relay_redelivers_after_a_crash_with_the_same_key(backend: Backend) {
    let Some(db) = TestDb::fresh(backend).await else {
        return;
    };
    let stubs = Stubs::start(Duration::ZERO).await;
    let http = Http::new();
    let launch = Launch::new("fixed", &db, &stubs)
        .arg("--lease-ms")
        .arg("300");

    let mut crashing = launch.clone().arg("--fault-crash-after-email-send").start();
    let created = http.create(&crashing.url, "acct_9", "2026-04").await;
    assert_eq!(created.status, 201, "{created:?}");
    let invoice_id = created.body["id"].as_str().expect("id").to_string();
    assert_eq!(
        crashing.wait_exit(Duration::from_secs(10)),
        Some(invoice_service::CRASH_EXIT_CODE),
        "log:\n{}",
        crashing.log()
    );
    assert_eq!(stubs.deliveries().len(), 1, "sent once before the crash");
    assert_eq!(
        db.count("SELECT COUNT(*) FROM outbox WHERE sent_at_ms IS NULL")
            .await,
        1,
        "the crash came before the mark"
    );

    let restarted = launch.start();
    let redelivered = eventually(Duration::from_secs(10), || async {
        stubs.deliveries().len() >= 2
    })
    .await;
    assert!(redelivered, "no redelivery; log:\n{}", restarted.log());
    let marked = eventually(Duration::from_secs(5), || async {
        db.count("SELECT COUNT(*) FROM outbox WHERE sent_at_ms IS NULL")
            .await
            == 0
    })
    .await;
    assert!(marked, "the redelivery was never marked sent");
    tokio::time::sleep(Duration::from_millis(600)).await;

    let deliveries = stubs.deliveries();
    assert_eq!(
        deliveries.len(),
        2,
        "at-least-once, and no more: {deliveries:?}"
    );
    for d in &deliveries {
        assert_eq!(d.invoice_id, invoice_id);
        assert_eq!(d.idempotency_key.as_deref(), Some(invoice_id.as_str()));
    }
}
