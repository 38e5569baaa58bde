//! `Idempotency-Key` on `POST /invoices` in the fixed variant: a retry gets the first answer back,
//! a key reused for another request is refused.

use std::time::Duration;

use crate::support::{Backend, Http, Launch, Stubs, TestDb, on_both_backends};

on_both_backends!(retry_with_the_same_key_returns_the_same_invoice);

async fn retry_with_the_same_key_returns_the_same_invoice(backend: Backend) {
    let Some(db) = TestDb::fresh(backend).await else {
        return;
    };
    let stubs = Stubs::start(Duration::from_millis(10)).await;
    let service = Launch::new("fixed", &db, &stubs).start();
    let http = Http::new();
    let key = [("idempotency-key", "order-42-attempt-any")];

    let first = http
        .create_with(&service.url, "acct_1", "2026-03", &key)
        .await;
    assert_eq!(first.status, 201, "{first:?}");
    let retry = http
        .create_with(&service.url, "acct_1", "2026-03", &key)
        .await;
    assert_eq!(retry.status, 201, "the first answer is replayed: {retry:?}");
    assert_eq!(retry.body, first.body);
    assert_eq!(stubs.usage_calls().len(), 1, "the retry did no work");

    let other = http
        .create_with(&service.url, "acct_2", "2026-03", &key)
        .await;
    assert_eq!(other.status, 422, "{other:?}");
    assert!(
        other.body["error"]
            .as_str()
            .unwrap_or_default()
            .contains("already used")
    );

    // Concurrent first attempts with one key also converge on one invoice.
    let key = [("idempotency-key", "concurrent")];
    stubs.set_usage_delay(Duration::from_millis(150));
    let (a, b) = tokio::join!(
        http.create_with(&service.url, "acct_3", "2026-03", &key),
        http.create_with(&service.url, "acct_3", "2026-03", &key),
    );
    assert!(a.status / 100 == 2 && b.status / 100 == 2, "{a:?} {b:?}");
    assert_eq!(a.body["id"], b.body["id"]);
    assert_eq!(http.list(&service.url, "acct_3", "2026-03").await.len(), 1);
    assert_eq!(db.count("SELECT COUNT(*) FROM idempotency_keys").await, 2);
}
