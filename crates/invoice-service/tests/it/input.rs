//! Bad input gets 400 with `{"error": ...}` naming what is wrong, in both variants; nothing is
//! created and nothing panics.

use std::time::Duration;

use hyper::Method;

use crate::support::{Backend, Http, Launch, Stubs, TestDb};

/// Sends `body` to `path` and checks for a 400 whose error mentions `needle`.
async fn check(
    http: &Http,
    service: &str,
    method: Method,
    path: &str,
    body: Option<&str>,
    needle: &str,
) {
    let reply = http
        .send(method.clone(), &format!("{service}{path}"), &[], body)
        .await;
    assert_eq!(reply.status, 400, "{method} {path} {body:?}: {reply:?}");
    let error = reply.body["error"]
        .as_str()
        .unwrap_or_else(|| panic!("no error field: {reply:?}"));
    assert!(
        error.contains(needle),
        "{method} {path} {body:?}: error {error:?} should mention {needle:?}"
    );
}

async fn rejects_bad_input(variant: &'static str) {
    let db = TestDb::fresh(Backend::Sqlite).await.expect("sqlite");
    let stubs = Stubs::start(Duration::ZERO).await;
    let service = Launch::new(variant, &db, &stubs).start();
    let http = Http::new();
    let s = &service.url;
    let post = Method::POST;

    check(
        &http,
        s,
        post.clone(),
        "/invoices",
        Some("{\"account_id\": "),
        "malformed JSON",
    )
    .await;
    check(
        &http,
        s,
        post.clone(),
        "/invoices",
        Some("not json"),
        "malformed JSON",
    )
    .await;
    check(
        &http,
        s,
        post.clone(),
        "/invoices",
        Some(""),
        "malformed JSON",
    )
    .await;
    check(
        &http,
        s,
        post.clone(),
        "/invoices",
        Some("[1, 2]"),
        "JSON object",
    )
    .await;
    check(
        &http,
        s,
        post.clone(),
        "/invoices",
        Some(r#"{"period": "2026-01"}"#),
        "missing field \"account_id\"",
    )
    .await;
    check(
        &http,
        s,
        post.clone(),
        "/invoices",
        Some(r#"{"account_id": "a"}"#),
        "missing field \"period\"",
    )
    .await;
    check(
        &http,
        s,
        post.clone(),
        "/invoices",
        Some(r#"{"account_id": "", "period": "2026-01"}"#),
        "non-empty",
    )
    .await;
    check(
        &http,
        s,
        post.clone(),
        "/invoices",
        Some(r#"{"account_id": 7, "period": "2026-01"}"#),
        "must be a string",
    )
    .await;
    for period in ["2026-13", "2026-1", "26-01", "2026/01", "January"] {
        let body = format!(r#"{{"account_id": "a", "period": "{period}"}}"#);
        check(&http, s, post.clone(), "/invoices", Some(&body), "YYYY-MM").await;
    }

    check(
        &http,
        s,
        Method::GET,
        "/invoices?account_id=a",
        None,
        "missing query parameter \"period\"",
    )
    .await;
    check(
        &http,
        s,
        Method::GET,
        "/invoices?account_id=a&period=2026-00",
        None,
        "YYYY-MM",
    )
    .await;

    check(
        &http,
        s,
        post.clone(),
        "/reconcile",
        Some(r#"{"period": "2026-01"}"#),
        "missing field \"account_ids\"",
    )
    .await;
    check(
        &http,
        s,
        post.clone(),
        "/reconcile",
        Some(r#"{"period": "2026-01", "account_ids": []}"#),
        "1 to",
    )
    .await;
    check(
        &http,
        s,
        post.clone(),
        "/reconcile",
        Some(r#"{"period": "2026-01", "account_ids": ["a", ""]}"#),
        "account_ids[1]",
    )
    .await;
    check(
        &http,
        s,
        post.clone(),
        "/reconcile",
        Some(r#"{"period": "2026-01", "account_ids": "a"}"#),
        "array",
    )
    .await;
    check(
        &http,
        s,
        post.clone(),
        "/reconcile",
        Some(r#"{"period": "x", "account_ids": ["a"]}"#),
        "YYYY-MM",
    )
    .await;

    let unknown = http
        .send(Method::GET, &format!("{s}/nope"), &[], None)
        .await;
    assert_eq!(unknown.status, 404);
    assert!(unknown.body["error"].is_string());
    let wrong_method = http
        .send(Method::DELETE, &format!("{s}/invoices"), &[], None)
        .await;
    assert_eq!(wrong_method.status, 405);

    assert_eq!(db.count("SELECT COUNT(*) FROM invoices").await, 0);
    assert_eq!(db.count("SELECT COUNT(*) FROM jobs").await, 0);
    assert!(stubs.usage_calls().is_empty());
    let health = http
        .send(Method::GET, &format!("{s}/health"), &[], None)
        .await;
    assert_eq!(
        health.status, 200,
        "still serving after all that: {health:?}"
    );
    assert_eq!(health.body["variant"], variant);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn naive_rejects_bad_input() {
    rejects_bad_input("naive").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fixed_rejects_bad_input() {
    rejects_bad_input("fixed").await;
}
