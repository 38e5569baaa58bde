//! How each variant meets a failing, slow or overloaded world: usage errors and timeouts, the
//! fixed variant's bounded retries, admission control, and `traceparent` propagation.

use std::time::Duration;

use crate::support::{Backend, Http, Launch, Stubs, TestDb, eventually};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn naive_makes_one_usage_attempt_and_answers_502() {
    let db = TestDb::fresh(Backend::Sqlite).await.expect("sqlite");
    let stubs = Stubs::start(Duration::ZERO).await;
    let service = Launch::new("naive", &db, &stubs).start();
    stubs.fail_usage(1);
    let reply = Http::new().create(&service.url, "acct_1", "2026-01").await;
    assert_eq!(reply.status, 502, "{reply:?}");
    assert!(
        reply.body["error"]
            .as_str()
            .unwrap_or_default()
            .contains("usage")
    );
    assert_eq!(stubs.usage_calls().len(), 1);
    assert_eq!(db.count("SELECT COUNT(*) FROM invoices").await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fixed_retries_usage_with_backoff_then_succeeds() {
    let db = TestDb::fresh(Backend::Sqlite).await.expect("sqlite");
    let stubs = Stubs::start(Duration::ZERO).await;
    let service = Launch::new("fixed", &db, &stubs).start();
    stubs.fail_usage(2);
    let reply = Http::new().create(&service.url, "acct_1", "2026-01").await;
    assert_eq!(reply.status, 201, "{reply:?}");
    assert_eq!(stubs.usage_calls().len(), 3, "two failures, then success");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fixed_gives_up_after_bounded_retries() {
    let db = TestDb::fresh(Backend::Sqlite).await.expect("sqlite");
    let stubs = Stubs::start(Duration::ZERO).await;
    let service = Launch::new("fixed", &db, &stubs).start();
    stubs.fail_usage(100);
    let reply = Http::new().create(&service.url, "acct_1", "2026-01").await;
    assert_eq!(reply.status, 502, "{reply:?}");
    assert!(
        reply.body["error"]
            .as_str()
            .unwrap_or_default()
            .contains("after 3 attempt"),
        "{reply:?}"
    );
    assert_eq!(stubs.usage_calls().len(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fixed_times_out_a_hanging_usage_call_with_504() {
    let db = TestDb::fresh(Backend::Sqlite).await.expect("sqlite");
    let stubs = Stubs::start(Duration::from_secs(5)).await;
    let service = Launch::new("fixed", &db, &stubs)
        .arg("--usage-timeout-ms")
        .arg("100")
        .arg("--usage-attempts")
        .arg("2")
        .start();
    let reply = Http::new().create(&service.url, "acct_1", "2026-01").await;
    assert_eq!(reply.status, 504, "{reply:?}");
    assert_eq!(stubs.usage_calls().len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fixed_sheds_load_past_max_in_flight() {
    let db = TestDb::fresh(Backend::Sqlite).await.expect("sqlite");
    let stubs = Stubs::start(Duration::from_millis(500)).await;
    let service = Launch::new("fixed", &db, &stubs)
        .arg("--max-in-flight")
        .arg("1")
        .start();
    let http = Http::new();
    let (a, b, c) = tokio::join!(
        http.create(&service.url, "acct_1", "2026-01"),
        http.create(&service.url, "acct_2", "2026-01"),
        http.create(&service.url, "acct_3", "2026-01"),
    );
    let replies = [&a, &b, &c];
    let shed: Vec<_> = replies.iter().filter(|r| r.status == 503).collect();
    assert!(!shed.is_empty(), "{replies:?}");
    for r in &shed {
        assert_eq!(
            r.headers.get("retry-after").map(|v| v.as_bytes()),
            Some(&b"1"[..])
        );
        assert!(
            r.body["error"]
                .as_str()
                .unwrap_or_default()
                .contains("in flight")
        );
    }
    assert!(replies.iter().any(|r| r.status == 201), "{replies:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn propagates_traceparent_to_usage_and_email() {
    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let parent = format!("00-{trace_id}-00f067aa0ba902b7-01");
    for variant in ["naive", "fixed"] {
        let db = TestDb::fresh(Backend::Sqlite).await.expect("sqlite");
        let stubs = Stubs::start(Duration::ZERO).await;
        let service = Launch::new(variant, &db, &stubs).start();
        let reply = Http::new()
            .create_with(
                &service.url,
                "acct_1",
                "2026-01",
                &[("traceparent", &parent)],
            )
            .await;
        assert_eq!(reply.status, 201, "{reply:?}");
        assert_eq!(
            reply.headers.get("x-correlation-id").map(|v| v.as_bytes()),
            Some(trace_id.as_bytes())
        );
        assert!(
            eventually(Duration::from_secs(5), || async {
                !stubs.deliveries().is_empty()
            })
            .await
        );
        let usage = stubs.usage_calls()[0]
            .traceparent
            .clone()
            .expect("usage traceparent");
        let email = stubs.deliveries()[0]
            .traceparent
            .clone()
            .expect("email traceparent");
        for header in [&usage, &email] {
            let parsed = invoice_service::TraceContext::parse(header).expect("valid");
            assert_eq!(parsed.trace_id, trace_id, "{variant}: {header}");
            assert_ne!(
                parsed.span_id, "00f067aa0ba902b7",
                "a child span, not the caller's"
            );
        }
        let log = service.log();
        assert!(
            log.lines()
                .any(|l| l.contains(trace_id) && l.contains("\"event\":\"invoice.inserted\"")),
            "{variant}: the decision log carries the correlation id:\n{log}"
        );
    }
}
