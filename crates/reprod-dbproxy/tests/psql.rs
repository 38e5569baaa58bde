//! The proxy between `psql` (PostgreSQL's own client, simple query protocol) and a real
//! server: multi-statement queries, COPY both ways, LISTEN/NOTIFY and transactions pass
//! through unchanged and are recorded; an injected error is answered in the statement's place
//! and the session goes on. Needs `DATABASE_URL` (a PostgreSQL server) and `psql`.

use std::io::Write as _;
use std::process::{Command, Stdio};
use std::time::Duration;

use reprod_dbproxy::{DbProxy, ProxyConfig, proxied_url};
use reprod_history::{History, RunClock, RunInfo};
use reprod_scenario::{DbFault, DbFaultKind, StatementKind};

fn server() -> Option<String> {
    match std::env::var("DATABASE_URL") {
        Ok(url) if url.starts_with("postgres") => Some(url),
        _ => {
            assert!(
                std::env::var_os("REPROD_CI").is_none(),
                "REPROD_CI is set, so the PostgreSQL halves must run: set DATABASE_URL"
            );
            eprintln!("SKIPPED (PostgreSQL half): DATABASE_URL is not set to a postgres:// URL");
            None
        }
    }
}

const SCRIPT: &str = "CREATE TEMP TABLE t (a int);
COPY t FROM STDIN;
1
2
\\.
SELECT count(*) FROM t;
COPY (SELECT a * 10 FROM t ORDER BY a) TO STDOUT;
LISTEN reprod_ch;
NOTIFY reprod_ch, 'hello';
SELECT 40 + 2 AS injected;
SELECT 7;
BEGIN;
INSERT INTO t VALUES (3);
COMMIT;
SELECT 'a' \\; SELECT 'b';
";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psql_sessions_pass_through_and_are_recorded() {
    let Some(url) = server() else {
        return;
    };
    let Proxied {
        dir,
        path,
        history,
        clock,
        proxy,
        through,
    } = through_proxy(
        &url,
        "psql",
        DbFault {
            kind: DbFaultKind::Error {
                sqlstate: "40001".into(),
                message: "injected by the test".into(),
            },
            probability: 1.0,
            statement: Some(StatementKind::Select),
            text: Some("AS injected".into()),
            key: None,
            from: Duration::ZERO,
            to: None,
        },
    )
    .await;

    let output = tokio::task::spawn_blocking(move || psql(&through, SCRIPT))
        .await
        .expect("join");
    let Some((stdout, stderr)) = output else {
        eprintln!("SKIPPED: psql is not installed");
        return;
    };
    let lines: Vec<&str> = stdout.lines().map(str::trim).collect();
    for expected in ["2", "10", "20", "7", "a", "b"] {
        assert!(
            lines.contains(&expected),
            "{expected:?} in:\n{stdout}\n{stderr}"
        );
    }
    assert!(
        stdout.contains("Asynchronous notification \"reprod_ch\" with payload \"hello\""),
        "NOTIFY passes through:\n{stdout}\n{stderr}"
    );
    assert!(
        stderr.contains("injected by the test") && !lines.contains(&"42"),
        "the injected error answers in the statement's place:\n{stdout}\n{stderr}"
    );

    tokio::time::sleep(Duration::from_millis(200)).await;
    let counts = proxy.stop().await;
    assert_eq!(counts.faults.load(std::sync::atomic::Ordering::Relaxed), 1);
    history
        .finish("completed", clock.now_us())
        .await
        .expect("finish");
    let conn = rusqlite::Connection::open(&path).expect("open");
    let one = |sql: &str| -> String {
        conn.query_row(sql, [], |r| r.get::<_, Option<String>>(0))
            .unwrap_or_else(|e| panic!("{sql}: {e}"))
            .unwrap_or_default()
    };
    assert_eq!(
        one("SELECT tag FROM db_statements WHERE text LIKE 'COPY t FROM%'"),
        "COPY 2"
    );
    assert_eq!(
        one("SELECT tag FROM db_statements WHERE text LIKE 'COPY (SELECT%'"),
        "COPY 2"
    );
    assert_eq!(
        one("SELECT sqlstate || ' ' || fault FROM db_statements WHERE text LIKE '%AS injected%'"),
        "40001 error"
    );
    assert_eq!(
        one("SELECT normalized FROM db_statements WHERE text LIKE 'SELECT count%'"),
        "SELECT count(*) FROM t"
    );
    assert_eq!(
        one(
            "SELECT COUNT(DISTINCT tx) || ' ' || COUNT(*) FROM db_statements
             WHERE kind IN ('begin', 'insert', 'commit') AND tx IS NOT NULL"
        ),
        "1 3",
        "BEGIN, INSERT and COMMIT are one transaction"
    );
    assert_eq!(
        one("SELECT tag FROM db_statements WHERE text LIKE 'SELECT ''a''%'"),
        "SELECT 1; SELECT 1",
        "a two-statement query is one simple Query"
    );
    assert_eq!(
        one(
            "SELECT CAST(COUNT(*) AS TEXT) FROM db_statements WHERE tx IS NOT NULL AND kind = 'select'"
        ),
        "0"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// A history in a directory of its own, and the proxy in front of `url`'s server with `fault`.
struct Proxied {
    dir: std::path::PathBuf,
    path: std::path::PathBuf,
    history: History,
    clock: RunClock,
    proxy: DbProxy,
    /// `url` through the proxy.
    through: String,
}

async fn through_proxy(url: &str, name: &str, fault: DbFault) -> Proxied {
    let dir = std::env::temp_dir().join(format!("reprod-dbproxy-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("dir");
    let path = dir.join("history.sqlite");
    let info = RunInfo {
        run_id: "r".into(),
        scenario: "t".into(),
        scenario_path: "t.toml".into(),
        seed: 1,
        started_at: "now".into(),
        conditions: String::new(),
        params: String::new(),
        dimensions: String::new(),
        callers: String::new(),
    };
    let (history, recorder) = History::create(&path, &info).expect("history");
    let clock = RunClock::start();
    let host = reprod_scenario::DatabasePart::Host.of(url).expect("host");
    let port = reprod_scenario::DatabasePart::Port
        .of(url)
        .unwrap_or_else(|| "5432".into());
    let config = ProxyConfig {
        upstream: format!("{host}:{port}"),
        key: None,
        faults: vec![fault],
        seed: 1,
        port: None,
    };
    let proxy = DbProxy::start(config, clock, recorder)
        .await
        .expect("listen");
    proxy.set_load_start(0);
    let through = proxied_url(url, proxy.port()).expect("a postgres URL");
    Proxied {
        dir,
        path,
        history,
        clock,
        proxy,
        through,
    }
}

/// Runs `script` with psql at `url`; (stdout, stderr), or `None` without psql.
fn psql(url: &str, script: &str) -> Option<(String, String)> {
    let mut child = match Command::new("psql")
        .args([url, "-X", "-A", "-t", "-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
    {
        Ok(child) => child,
        Err(e) => {
            assert!(
                std::env::var_os("REPROD_CI").is_none(),
                "REPROD_CI is set but psql cannot run ({e}): apt-get install postgresql-client"
            );
            return None;
        }
    };
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(script.as_bytes())
        .expect("write");
    let out = child.wait_with_output().expect("psql");
    Some((
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ambiguous_commit_is_applied_and_its_answer_lost() {
    let Some(url) = server() else {
        return;
    };
    let table = format!("reprod_ambiguous_{}", std::process::id());
    let Proxied {
        dir,
        history,
        clock,
        proxy,
        through,
        ..
    } = through_proxy(
        &url,
        "amb",
        DbFault {
            kind: DbFaultKind::Ambiguous,
            probability: 1.0,
            statement: Some(StatementKind::Commit),
            text: None,
            key: None,
            from: Duration::ZERO,
            to: None,
        },
    )
    .await;
    let direct = url.clone();
    let t = table.clone();
    let outcome = tokio::task::spawn_blocking(move || {
        psql(&direct, &format!("CREATE TABLE {t} (a int);"))?;
        let via = psql(
            &through,
            &format!("BEGIN;\nINSERT INTO {t} VALUES (1);\nCOMMIT;\n"),
        )?;
        let count = psql(
            &direct,
            &format!("SELECT count(*) FROM {t};\nDROP TABLE {t};"),
        )?;
        Some((via, count))
    })
    .await
    .expect("join");
    let _ = proxy.stop().await;
    history
        .finish("completed", clock.now_us())
        .await
        .expect("finish");
    let _ = std::fs::remove_dir_all(&dir);
    let Some(((_, via_err), (count, _))) = outcome else {
        eprintln!("SKIPPED: psql is not installed");
        return;
    };
    assert!(
        via_err.contains("closed the connection")
            || via_err.contains("connection to server was lost"),
        "the client lost the answer to its COMMIT: {via_err}"
    );
    assert_eq!(
        count.lines().next().map(str::trim),
        Some("1"),
        "the commit was applied"
    );
}
