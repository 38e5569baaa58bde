//! Setup steps against a service written for the test in Python (no code shared with reprod):
//! an admin login whose session comes back in a cookie, a user registered per key (its token
//! captured from JSON), a fixture created per user (its id captured), and callers that use all
//! of them — with no wrapper script.

use crate::support::{TempDir, run_json, scalar};

const ACCOUNTS: &str = r#"
import http.server, json, threading, itertools
lock = threading.Lock()
users, links, ids = {}, {}, itertools.count(1)
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def answer(self, status, body=None, headers=()):
        data = json.dumps(body).encode() if body is not None else b""
        self.send_response(status)
        for k, v in headers:
            self.send_header(k, v)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)
    def body(self):
        n = int(self.headers.get("content-length", "0"))
        return json.loads(self.rfile.read(n) or b"{}")
    def user(self):
        token = self.headers.get("authorization", "").removeprefix("Bearer ")
        return next((u for u, t in users.items() if t == token), None)
    def do_POST(self):
        if self.path == "/admin/login":
            if self.body().get("password") == "s3cret":
                return self.answer(200, {"ok": True}, [("set-cookie", "sid=adm-77; Path=/; HttpOnly")])
            return self.answer(401, {"error": "wrong password"})
        if self.path == "/users":
            if "sid=adm-77" not in self.headers.get("cookie", ""):
                return self.answer(403, {"error": "admins only"})
            name = self.body()["name"]
            with lock:
                users[name] = "tok-" + name
            return self.answer(201, {"token": users[name]})
        if self.path == "/links":
            user = self.user()
            if user is None:
                return self.answer(401, {"error": "who are you"})
            with lock:
                link = next(ids)
                links[link] = user
            return self.answer(201, {"id": link})
        self.answer(404, {})
    def do_GET(self):
        user = self.user()
        link = int(self.path.rsplit("/", 1)[-1] or 0)
        if user is not None and links.get(link) == user:
            return self.answer(200, {"id": link, "owner": user})
        self.answer(404, {"error": "not yours"})
    def log_message(self, *args):
        pass
server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), H)
print(f"listening on http://127.0.0.1:{server.server_port}", flush=True)
server.serve_forever()
"#;

const SCENARIO: &str = r#"
duration = "1s"
drain = "0s"

[params]
admin_password = { default = "s3cret", secret = true }

[[service]]
name = "accounts"
command = ["python3", "accounts.py"]
cwd = "."
ready = { stdout_prefix = "listening on ", timeout = "20s" }

[[setup]]
name = "admin"
request = { method = "POST", path = "/admin/login", body = '{"password": "{param.admin_password|json}"}' }
capture = { sid = { cookie = "sid" } }

[[setup]]
name = "register"
request = { method = "POST", path = "/users", headers = { cookie = "sid={setup.sid}" }, body = '{"name": "{key|json}"}' }
for_each = { keys = { count = 20, prefix = "user_" }, concurrency = 4 }
expect = [201]
capture = { token = { json = "/token" } }

[[setup]]
name = "fixture"
request = { method = "POST", path = "/links", headers = { authorization = "Bearer {key.token}" } }
for_each = { keys = { count = 20, prefix = "user_" }, concurrency = 4 }
capture = { link = { json = "/id" } }

[[caller]]
name = "readers"
request = { path = "/links/{key.link}", headers = { authorization = "Bearer {key.token}" } }
keys = { count = 20, prefix = "user_" }
rate = 40
"#;

#[test]
fn setup_logs_in_registers_users_and_makes_fixtures_before_the_load() {
    let dir = TempDir::new();
    dir.write("accounts.py", ACCOUNTS);
    let scenario = dir.write("accounts.toml", SCENARIO);
    let out = dir.path().join("runs");
    let (code, summary, stderr) = run_json("run", &scenario, &out, &[]);
    assert_eq!(code, Some(0), "{stderr}\n{summary}");
    let ops = summary["ops"]["total"].as_u64().unwrap_or(0);
    assert!(ops >= 30, "{summary}");
    assert_eq!(
        summary["ops"]["ok"].as_u64(),
        Some(ops),
        "every read used its own user's token and fixture: {summary}"
    );
    assert_eq!(summary["setup"]["requests"], 41, "{summary}");
    let history = crate::support::run_dir(&out).join("history.sqlite");
    assert_eq!(scalar(&history, "SELECT COUNT(*) FROM setup_requests"), 41);
    assert_eq!(
        scalar(
            &history,
            "SELECT COUNT(*) FROM setup_requests WHERE status NOT BETWEEN 200 AND 299"
        ),
        0
    );
    assert_eq!(
        scalar(&history, "SELECT COUNT(*) FROM ops"),
        ops as i64,
        "setup requests are not operations"
    );
    assert_eq!(
        scalar(
            &history,
            "SELECT (SELECT MIN(intended_start_us) FROM ops) >= (SELECT MAX(done_us) FROM setup_requests)"
        ),
        1,
        "the load clock starts after setup"
    );
}

#[test]
fn a_failing_setup_step_stops_the_run_before_the_load_and_says_why() {
    let dir = TempDir::new();
    dir.write("accounts.py", ACCOUNTS);
    let scenario = dir.write("accounts.toml", SCENARIO);
    let out = dir.path().join("runs");
    let (code, summary, stderr) =
        run_json("run", &scenario, &out, &["--set", "admin_password=guess"]);
    assert_eq!(code, Some(3), "{stderr}");
    assert_eq!(summary["status"], "start_failed");
    let reason = summary["status_reason"].as_str().unwrap_or_default();
    assert!(
        reason.contains(
            "setup step \"admin\": answered 401 (expected 2xx): {\"error\": \"wrong password\"}"
        ),
        "{reason}"
    );
    assert_eq!(summary["ops"]["total"], 0);
    assert_eq!(
        summary["params"]["admin_password"], "…",
        "a secret stays secret: {summary}"
    );
}
