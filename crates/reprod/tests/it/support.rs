//! Running `reprod` as a user would, and reading what it leaves behind.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};

/// The workspace root.
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The shipped invoice scenario.
pub fn invoices() -> PathBuf {
    root().join("scenarios/invoices.toml")
}

/// A fresh directory, removed on drop.
#[derive(Debug)]
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new() -> TempDir {
        static N: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "reprod-it-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("temp dir");
        TempDir(dir)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }

    pub fn write(&self, name: &str, text: &str) -> PathBuf {
        let path = self.0.join(name);
        std::fs::write(&path, text).expect("write");
        path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if std::env::var_os("KEEP_TEST_DIRS").is_none() {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

/// `reprod` with `args`; checks that the invoice service binary it needs is beside it.
pub fn reprod(args: &[&str]) -> Command {
    let exe = PathBuf::from(env!("CARGO_BIN_EXE_reprod"));
    let service = exe.with_file_name("invoice-service");
    assert!(
        service.exists(),
        "{} is missing: build the workspace (cargo build --workspace) before these tests",
        service.display()
    );
    let mut cmd = Command::new(exe);
    cmd.args(args).stdin(Stdio::null());
    cmd
}

/// Runs to the end and returns the output.
pub fn run(args: &[&str]) -> Output {
    reprod(args).output().expect("run reprod")
}

/// Runs `reprod SUBCOMMAND SCENARIO --json --out OUT EXTRA...` and parses what it prints:
/// (exit code, the JSON, stderr).
pub fn run_json(
    subcommand: &str,
    scenario: &Path,
    out: &Path,
    extra: &[&str],
) -> (Option<i32>, serde_json::Value, String) {
    let mut args = vec![
        subcommand,
        scenario.to_str().expect("utf-8"),
        "--json",
        "--out",
        out.to_str().expect("utf-8"),
    ];
    args.extend_from_slice(extra);
    let output = run(&args);
    let stdout = text(&output.stdout);
    let json = serde_json::from_str(&stdout).unwrap_or_else(|e| {
        panic!(
            "--json printed no JSON ({e}):\n{stdout}\nstderr:\n{}",
            text(&output.stderr)
        )
    });
    (output.status.code(), json, text(&output.stderr))
}

pub fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// The only run directory under `out`.
pub fn run_dir(out: &Path) -> PathBuf {
    let dirs: Vec<PathBuf> = std::fs::read_dir(out)
        .expect("out dir")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.is_dir())
        .collect();
    assert_eq!(dirs.len(), 1, "{dirs:?}");
    dirs[0].clone()
}

/// Runs one query on a history file and returns the first column of the first row.
pub fn scalar(history: &Path, sql: &str) -> i64 {
    let conn = rusqlite::Connection::open(history).expect("open history");
    conn.query_row(sql, [], |r| r.get(0)).expect("query")
}

/// A fresh PostgreSQL database URL when `DATABASE_URL` points at a server, dropped on drop.
pub struct PgDb {
    pub url: String,
    admin: String,
    name: String,
}

impl PgDb {
    pub async fn fresh() -> Option<PgDb> {
        let admin = match std::env::var("DATABASE_URL") {
            Ok(url) if url.starts_with("postgres") => url,
            _ => {
                assert!(
                    std::env::var_os("REPROD_CI").is_none(),
                    "REPROD_CI is set, so the PostgreSQL halves must run: set DATABASE_URL"
                );
                eprintln!(
                    "SKIPPED (PostgreSQL half): DATABASE_URL is not set to a postgres:// URL"
                );
                return None;
            }
        };
        let name = format!("reprod_it_{}_{:08x}", std::process::id(), rand_u32());
        let pool = sqlx::PgPool::connect(&admin)
            .await
            .expect("DATABASE_URL reachable");
        sqlx::query(&format!("CREATE DATABASE \"{name}\""))
            .execute(&pool)
            .await
            .expect("create db");
        pool.close().await;
        let mut url = url::Url::parse(&admin).expect("url");
        url.set_path(&format!("/{name}"));
        Some(PgDb {
            url: url.to_string(),
            admin,
            name,
        })
    }

    pub async fn drop_now(self) {
        let pool = sqlx::PgPool::connect(&self.admin).await.expect("admin");
        let _ = sqlx::query(&format!(
            "DROP DATABASE IF EXISTS \"{}\" WITH (FORCE)",
            self.name
        ))
        .execute(&pool)
        .await;
        pool.close().await;
    }
}

fn rand_u32() -> u32 {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    t ^ std::process::id().rotate_left(16)
}

/// Processes whose command line mentions `needle` (other than this test).
pub fn processes_mentioning(needle: &str) -> Vec<String> {
    let mut found = Vec::new();
    let me = std::process::id().to_string();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        if entry.file_name().to_string_lossy() == me {
            continue;
        }
        let cmdline = entry.path().join("cmdline");
        if let Ok(bytes) = std::fs::read(&cmdline) {
            let line = String::from_utf8_lossy(&bytes).replace('\0', " ");
            if line.contains(needle) {
                found.push(line);
            }
        }
    }
    found
}
