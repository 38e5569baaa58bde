//! reprod's PostgreSQL wire-protocol proxy. The services reprod starts reach their database
//! through it (`[database] proxy = true`): every byte passes through unchanged — startup and
//! authentication, the simple and extended query protocols with pipelining, COPY, NOTIFY,
//! cancel requests — while each statement is recorded in the history's `db_statements` with
//! its text, parameters, command tag, rows, SQLSTATE, transaction and times, and the
//! scenario's statement faults are injected (latency before forwarding, an error in place of
//! the statement, a dropped connection, a commit whose answer is lost).
//!
//! Messages are framed here (a type byte and a length) so that each one is forwarded as it
//! came; the few whose contents matter (Query, Parse, Bind, Execute, CommandComplete,
//! ErrorResponse, ReadyForQuery) are decoded with `pgwire`'s message codecs. SSL and GSS
//! encryption requests are answered `N` (loopback, plain text).

#![deny(missing_docs)]

pub mod sql;

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use pgwire::messages::extendedquery::{Bind, Execute, Parse};
use pgwire::messages::response::{
    CommandComplete, ErrorResponse, ReadyForQuery, TransactionStatus,
};
use pgwire::messages::simplequery::Query;
use pgwire::messages::{DecodeContext, Message};
use reprod_faults::latency::Sampler;
use reprod_history::{DbStatementRecord, Event, Recorder, RunClock};
use reprod_scenario::{DbFault, DbFaultKind, StatementKey, StatementKind};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::tcp::OwnedWriteHalf;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinSet;

/// Statements recorded per run; later ones are counted, not stored.
pub const MAX_STATEMENTS: u64 = 1_000_000;
/// The largest message framed (PostgreSQL's own limit is 1 GiB).
const MAX_MESSAGE_BYTES: usize = 1 << 30;

const SSL_REQUEST: u32 = 80_877_103;
const GSS_REQUEST: u32 = 80_877_104;
const CANCEL_REQUEST: u32 = 80_877_102;

/// What the proxy needs to know.
#[derive(Clone, Debug)]
pub struct ProxyConfig {
    /// The real server, `host:port`.
    pub upstream: String,
    /// How a statement's key is found.
    pub key: Option<StatementKey>,
    /// Statement faults, in scenario order.
    pub faults: Vec<DbFault>,
    /// The run's seed: fault draws derive from it.
    pub seed: u64,
    /// The loopback port to listen on; `None`: any free one.
    pub port: Option<u16>,
}

/// What the proxy saw.
#[derive(Debug, Default)]
pub struct ProxyCounts {
    /// Connections the services opened.
    pub connections: AtomicU64,
    /// Connections open now.
    pub open: AtomicI64,
    /// The most open at once.
    pub max_open: AtomicI64,
    /// Statements recorded.
    pub statements: AtomicU64,
    /// Statements not recorded (past [`MAX_STATEMENTS`], or the history was behind).
    pub dropped: AtomicU64,
    /// Faults injected.
    pub faults: AtomicU64,
    /// Connections the proxy could not take to the server, with the last reason.
    pub upstream_failures: AtomicU64,
    /// Why the last connection to the server failed.
    pub last_upstream_failure: Mutex<Option<String>>,
    /// Per replica (its `application_name`; `""` when it gave none): connections opened,
    /// open now, the most open at once — each replica's pool as the database saw it.
    pub per_replica: Mutex<BTreeMap<String, ReplicaConnections>>,
}

/// One replica's connections through the proxy.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ReplicaConnections {
    /// Opened over the run.
    pub connections: u64,
    /// Open now.
    pub open: u64,
    /// The most open at once.
    pub max_open: u64,
}

impl ProxyCounts {
    fn replica_opened(&self, replica: &str) {
        let mut all = self.per_replica.lock().unwrap_or_else(|p| p.into_inner());
        let r = all.entry(replica.to_string()).or_default();
        r.connections += 1;
        r.open += 1;
        r.max_open = r.max_open.max(r.open);
    }

    fn replica_closed(&self, replica: &str) {
        let mut all = self.per_replica.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(r) = all.get_mut(replica) {
            r.open = r.open.saturating_sub(1);
        }
    }
}

/// The running proxy; dropping it (or [`DbProxy::stop`]) stops listening and cuts the
/// connections.
#[derive(Debug)]
pub struct DbProxy {
    port: u16,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
    counts: Arc<ProxyCounts>,
    load_start_us: Arc<AtomicI64>,
}

struct State {
    config: ProxyConfig,
    key_regex: Option<regex_lite::Regex>,
    key_column: Option<sql::ColumnKey>,
    text_regexes: Vec<Option<regex_lite::Regex>>,
    samplers: Vec<Option<Sampler>>,
    clock: RunClock,
    recorder: Recorder,
    counts: Arc<ProxyCounts>,
    load_start_us: Arc<AtomicI64>,
    next_conn: AtomicI64,
}

impl DbProxy {
    /// Listens on a free loopback port.
    pub async fn start(
        config: ProxyConfig,
        clock: RunClock,
        recorder: Recorder,
    ) -> std::io::Result<DbProxy> {
        let listener = TcpListener::bind(("127.0.0.1", config.port.unwrap_or(0))).await?;
        let port = listener.local_addr()?.port();
        let counts = Arc::new(ProxyCounts::default());
        let load_start_us = Arc::new(AtomicI64::new(i64::MAX));
        let key_regex = match &config.key {
            Some(StatementKey::Regex(re)) => regex_lite::Regex::new(re).ok(),
            _ => None,
        };
        let key_column = match &config.key {
            Some(StatementKey::Column(c)) => sql::ColumnKey::new(c),
            _ => None,
        };
        let text_regexes = config
            .faults
            .iter()
            .map(|f| {
                f.text
                    .as_deref()
                    .and_then(|t| regex_lite::Regex::new(t).ok())
            })
            .collect();
        let samplers = config
            .faults
            .iter()
            .map(|f| match &f.kind {
                DbFaultKind::Latency(l) => Some(Sampler::new(l)),
                _ => None,
            })
            .collect();
        let state = Arc::new(State {
            config,
            key_regex,
            key_column,
            text_regexes,
            samplers,
            clock,
            recorder,
            counts: Arc::clone(&counts),
            load_start_us: Arc::clone(&load_start_us),
            next_conn: AtomicI64::new(1),
        });
        let (stop, mut stopped) = watch::channel(false);
        let task = tokio::spawn(async move {
            let mut connections = JoinSet::new();
            loop {
                tokio::select! {
                    accepted = listener.accept() => {
                        let Ok((stream, _)) = accepted else {
                            tokio::time::sleep(Duration::from_millis(10)).await;
                            continue;
                        };
                        let state = Arc::clone(&state);
                        connections.spawn(async move { serve(state, stream).await });
                    }
                    Some(_) = connections.join_next(), if !connections.is_empty() => {}
                    _ = stopped.changed() => break,
                }
            }
            connections.abort_all();
        });
        Ok(DbProxy {
            port,
            stop,
            task,
            counts,
            load_start_us,
        })
    }

    /// The loopback port it listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Fault windows count from here (run clock µs); no fault applies before it (migrations,
    /// setup).
    pub fn set_load_start(&self, at_us: i64) {
        self.load_start_us.store(at_us, Ordering::Release);
    }

    /// What it saw so far.
    pub fn counts(&self) -> &ProxyCounts {
        &self.counts
    }

    /// Stops listening and cuts every connection.
    pub async fn stop(self) -> Arc<ProxyCounts> {
        let _ = self.stop.send(true);
        let _ = self.task.await;
        self.counts
    }
}

/// `url` pointed at the proxy on `port`: the same user, password, database and parameters,
/// `127.0.0.1:port` for the host, and `sslmode=disable` (the proxy answers `N` to SSL).
/// `None` when `url` is not `postgres://` or `postgresql://`.
pub fn proxied_url(url: &str, port: u16) -> Option<String> {
    let (scheme, rest) = url.split_once("://")?;
    if scheme != "postgres" && scheme != "postgresql" {
        return None;
    }
    let end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(end);
    let userinfo = authority.rsplit_once('@').map(|(u, _)| u);
    let (path, query) = match tail.split_once('?') {
        Some((path, query)) => (path, query),
        None => (tail, ""),
    };
    let mut params: Vec<&str> = query
        .split('&')
        .filter(|p| !p.is_empty() && !p.starts_with("sslmode=") && !p.starts_with("host="))
        .collect();
    params.push("sslmode=disable");
    Some(format!(
        "{scheme}://{}127.0.0.1:{port}{path}?{}",
        userinfo.map(|u| format!("{u}@")).unwrap_or_default(),
        params.join("&")
    ))
}

/// One statement on its way through.
#[derive(Debug)]
struct Pending {
    /// A simple-protocol Query: it ends at ReadyForQuery, and may hold several statements.
    simple: bool,
    record: DbStatementRecord,
    /// Completed (CommandComplete, ErrorResponse, EmptyQuery, PortalSuspended).
    finished: bool,
    /// An error the proxy answers in its place (it never reached the server).
    injected: Option<Bytes>,
    /// Close the connection when its answer comes (an ambiguous commit).
    close_after: bool,
}

#[cfg(test)]
mod tests {
    use super::proxied_url;

    #[test]
    fn urls_point_at_the_proxy() {
        assert_eq!(
            proxied_url(
                "postgres://u:p%40ss@db.local:6543/app?sslmode=require&x=1",
                7000
            )
            .as_deref(),
            Some("postgres://u:p%40ss@127.0.0.1:7000/app?x=1&sslmode=disable")
        );
        assert_eq!(
            proxied_url("postgresql://127.0.0.1/test", 7000).as_deref(),
            Some("postgresql://127.0.0.1:7000/test?sslmode=disable")
        );
        assert_eq!(proxied_url("sqlite:/tmp/x.db", 7000), None);
    }
}

#[derive(Debug)]
enum Item {
    Statement(Box<Pending>),
    /// The client's Sync: the server answers ReadyForQuery for it.
    Sync,
}

/// What the proxy reads from a statement's text, once per Parse (or simple Query) rather than
/// per execution: a prepared statement runs many times with the same text.
#[derive(Debug)]
struct Statement {
    /// The text as sent, bounded.
    text: String,
    normalized: String,
    kind: StatementKind,
    table: Option<String>,
    /// From a sqlcommenter comment.
    trace_id: Option<String>,
    /// Where its key is, by the scenario's rule.
    key: Option<sql::KeyAt>,
    /// Parameter types from Parse, for reading binary parameters.
    oids: Vec<u32>,
}

/// What one connection's two directions share; never held across an await.
#[derive(Debug, Default)]
struct Conn {
    statements: HashMap<String, Arc<Statement>>,
    portals: HashMap<String, (Arc<Statement>, Vec<serde_json::Value>)>,
    queue: VecDeque<Item>,
    /// Answered, waiting for ReadyForQuery to learn their transaction.
    answered: Vec<DbStatementRecord>,
    /// The server's last transaction status.
    status: u8,
    tx: Option<i64>,
    next_tx: i64,
    /// After an injected error in the extended protocol: drop messages until Sync, as the
    /// server would have.
    skip_until_sync: bool,
    replica: Option<String>,
    rng: fastrand::Rng,
}

fn decode<M: Message>(frame: &[u8]) -> Option<M> {
    let mut buf = BytesMut::from(frame);
    M::decode(&mut buf, &DecodeContext::default())
        .ok()
        .flatten()
}

/// One whole message off the front of `buf` (type byte, length, body), when it is there.
fn next_frame(buf: &mut BytesMut) -> Result<Option<Bytes>, String> {
    if buf.len() < 5 {
        return Ok(None);
    }
    let len = u32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]) as usize;
    if !(4..=MAX_MESSAGE_BYTES).contains(&len) {
        return Err(format!(
            "a message of {len} bytes is not PostgreSQL's protocol"
        ));
    }
    if buf.len() < len + 1 {
        return Ok(None);
    }
    Ok(Some(buf.split_to(len + 1).freeze()))
}

fn error_frame(sqlstate: &str, message: &str) -> Bytes {
    let mut buf = BytesMut::new();
    let _ = ErrorResponse::new(vec![
        (b'S', "ERROR".to_string()),
        (b'V', "ERROR".to_string()),
        (b'C', sqlstate.to_string()),
        (b'M', message.to_string()),
    ])
    .encode(&mut buf);
    buf.freeze()
}

fn ready_frame(status: u8) -> Bytes {
    let status = match status {
        b'T' => TransactionStatus::Transaction,
        b'E' => TransactionStatus::Error,
        _ => TransactionStatus::Idle,
    };
    let mut buf = BytesMut::new();
    let _ = ReadyForQuery::new(status).encode(&mut buf);
    buf.freeze()
}

async fn serve(state: Arc<State>, mut client: TcpStream) {
    let _ = client.set_nodelay(true);
    let conn_id = state.next_conn.fetch_add(1, Ordering::Relaxed);
    // Startup: answer encryption requests N, pass a cancel request on, forward the startup.
    let (startup, replica) = loop {
        let mut head = [0u8; 8];
        if client.read_exact(&mut head).await.is_err() {
            return;
        }
        let len = u32::from_be_bytes([head[0], head[1], head[2], head[3]]) as usize;
        let code = u32::from_be_bytes([head[4], head[5], head[6], head[7]]);
        if !(8..=10_000).contains(&len) {
            return;
        }
        let mut rest = vec![0u8; len - 8];
        if client.read_exact(&mut rest).await.is_err() {
            return;
        }
        match code {
            SSL_REQUEST | GSS_REQUEST => {
                if client.write_all(b"N").await.is_err() {
                    return;
                }
            }
            CANCEL_REQUEST => {
                if let Ok(mut upstream) = TcpStream::connect(&state.config.upstream).await {
                    let _ = upstream.write_all(&head).await;
                    let _ = upstream.write_all(&rest).await;
                }
                return;
            }
            _ => {
                let mut packet = head.to_vec();
                packet.extend_from_slice(&rest);
                break (packet, application_name(&rest));
            }
        }
    };
    let upstream = match TcpStream::connect(&state.config.upstream).await {
        Ok(s) => s,
        Err(e) => {
            let why = format!(
                "reprod's database proxy could not reach the server at {}: {e}",
                state.config.upstream
            );
            state
                .counts
                .upstream_failures
                .fetch_add(1, Ordering::Relaxed);
            if let Ok(mut last) = state.counts.last_upstream_failure.lock() {
                *last = Some(why.clone());
            }
            let _ = client.write_all(&error_frame("08006", &why)).await;
            return;
        }
    };
    let _ = upstream.set_nodelay(true);
    state.counts.connections.fetch_add(1, Ordering::Relaxed);
    let open = state.counts.open.fetch_add(1, Ordering::Relaxed) + 1;
    state.counts.max_open.fetch_max(open, Ordering::Relaxed);
    let replica_name = replica.clone().unwrap_or_default();
    state.counts.replica_opened(&replica_name);
    let (client_r, client_w) = client.into_split();
    let (upstream_r, mut upstream_w) = upstream.into_split();
    if upstream_w.write_all(&startup).await.is_ok() {
        let conn = Mutex::new(Conn {
            status: b'I',
            replica,
            rng: fastrand::Rng::with_seed(reprod_scenario::seed::mix(
                state.config.seed,
                conn_id as u64,
            )),
            ..Conn::default()
        });
        let client_w = tokio::sync::Mutex::new(client_w);
        tokio::select! {
            _ = frontend(&state, conn_id, &conn, client_r, upstream_w, &client_w) => {}
            _ = backend(&state, &conn, upstream_r, &client_w) => {}
        }
        // Statements still waiting when the connection went: recorded, unanswered.
        let left = take_finished(&mut conn.lock().unwrap_or_else(|p| p.into_inner()));
        for mut r in left {
            if r.tag.is_none() && r.error.is_none() {
                r.error = Some("no answer: the connection closed first".to_string());
            }
            state.keep(r);
        }
    }
    state.counts.open.fetch_sub(1, Ordering::Relaxed);
    state.counts.replica_closed(&replica_name);
}

/// `application_name` from a startup packet's parameters (after the protocol version).
fn application_name(body: &[u8]) -> Option<String> {
    let mut parts = body.split(|b| *b == 0);
    while let (Some(k), Some(v)) = (parts.next(), parts.next()) {
        if k == b"application_name" {
            return Some(String::from_utf8_lossy(v).into_owned()).filter(|s| !s.is_empty());
        }
        if k.is_empty() {
            break;
        }
    }
    None
}

/// What the scenario's faults say about one statement.
enum Decision {
    Pass,
    Latency(Duration),
    Error { sqlstate: String, message: String },
    Reset,
    Ambiguous,
}

impl State {
    fn decide(&self, conn: &mut Conn, record: &DbStatementRecord) -> Decision {
        if self.config.faults.is_empty() {
            return Decision::Pass;
        }
        let load_start = self.load_start_us.load(Ordering::Acquire);
        let now = self.clock.now_us();
        if now < load_start {
            return Decision::Pass;
        }
        let since = Duration::from_micros((now - load_start) as u64);
        let rng = &mut conn.rng;
        for (i, f) in self.config.faults.iter().enumerate() {
            if since < f.from || f.to.is_some_and(|to| since >= to) {
                continue;
            }
            if f.statement.is_some_and(|k| k.name() != record.kind) {
                continue;
            }
            if let Some(Some(re)) = self.text_regexes.get(i)
                && !re.is_match(&record.normalized)
                && !re.is_match(&record.text)
            {
                continue;
            }
            if let Some(key) = &f.key
                && record.key.as_deref() != Some(key.as_str())
            {
                continue;
            }
            // Draw for every matching rule, so one rule's draws do not shift another's.
            let u = rng.f64();
            if u >= f.probability {
                continue;
            }
            self.counts.faults.fetch_add(1, Ordering::Relaxed);
            return match &f.kind {
                DbFaultKind::Latency(_) => match self.samplers.get(i).and_then(Option::as_ref) {
                    Some(s) => Decision::Latency(s.sample(rng.f64())),
                    None => Decision::Pass,
                },
                DbFaultKind::Error { sqlstate, message } => Decision::Error {
                    sqlstate: sqlstate.clone(),
                    message: message.clone(),
                },
                DbFaultKind::Reset => Decision::Reset,
                DbFaultKind::Ambiguous => Decision::Ambiguous,
            };
        }
        Decision::Pass
    }

    /// What `text` is, read once.
    fn statement(&self, text: &str, oids: Vec<u32>) -> Statement {
        let normalized = sql::normalize(text);
        let kind = sql::kind(&normalized);
        let key = match &self.config.key {
            Some(StatementKey::Param(n)) => Some(sql::KeyAt::Param(*n)),
            Some(StatementKey::Regex(_)) => self
                .key_regex
                .as_ref()
                .and_then(|re| re.captures(text))
                .and_then(|c| c.get(1))
                .map(|m| sql::KeyAt::Literal(m.as_str().to_string())),
            Some(StatementKey::Column(_)) => self.key_column.as_ref().and_then(|k| k.locate(text)),
            None => None,
        };
        Statement {
            table: sql::table(&normalized, kind),
            text: sql::bounded(text, sql::MAX_TEXT_CHARS),
            normalized,
            kind,
            trace_id: sql::traceparent(text),
            key,
            oids,
        }
    }

    /// A new record for `statement` run with `params`.
    fn record(
        &self,
        conn_id: i64,
        conn: &Conn,
        statement: &Statement,
        params: &[serde_json::Value],
    ) -> DbStatementRecord {
        DbStatementRecord {
            conn: conn_id,
            replica: conn.replica.clone(),
            tx: None,
            tx_status: None,
            kind: statement.kind.name(),
            table: statement.table.clone(),
            text: statement.text.clone(),
            normalized: statement.normalized.clone(),
            params: (!params.is_empty()).then(|| sql::params_json(params)),
            trace_id: statement.trace_id.clone(),
            key: statement.key.as_ref().and_then(|k| k.value(params)),
            tag: None,
            rows: None,
            sqlstate: None,
            error: None,
            received_us: self.clock.now_us(),
            done_us: 0,
            delay_us: 0,
            fault: None,
        }
    }

    fn keep(&self, mut record: DbStatementRecord) {
        if record.done_us == 0 {
            record.done_us = self.clock.now_us();
        }
        if self.counts.statements.load(Ordering::Relaxed) >= MAX_STATEMENTS {
            self.counts.dropped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        if self
            .recorder
            .try_record(Event::DbStatement(Box::new(record)))
        {
            self.counts.statements.fetch_add(1, Ordering::Relaxed);
        } else {
            self.counts.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Client → server: frames each message, records statements, applies faults, forwards.
async fn frontend(
    state: &State,
    conn_id: i64,
    conn: &Mutex<Conn>,
    mut client: tokio::net::tcp::OwnedReadHalf,
    mut upstream: OwnedWriteHalf,
    client_w: &tokio::sync::Mutex<OwnedWriteHalf>,
) {
    let mut buf = BytesMut::with_capacity(16 * 1024);
    loop {
        match client.read_buf(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        let mut out = BytesMut::new();
        loop {
            let frame = match next_frame(&mut buf) {
                Ok(Some(frame)) => frame,
                Ok(None) => break,
                Err(_) => return,
            };
            let mut forward = true;
            let mut decision = Decision::Pass;
            {
                let mut c = conn.lock().unwrap_or_else(|p| p.into_inner());
                let skipping = c.skip_until_sync;
                match frame[0] {
                    b'Q' => {
                        let text = decode::<Query>(&frame).map_or_else(
                            || {
                                String::from_utf8_lossy(
                                    frame.get(5..frame.len() - 1).unwrap_or(&[]),
                                )
                                .into_owned()
                            },
                            |q| q.query,
                        );
                        let statement = state.statement(&text, Vec::new());
                        let record = state.record(conn_id, &c, &statement, &[]);
                        decision = state.decide(&mut c, &record);
                        push(&mut c, record, true, &mut decision, &mut forward);
                    }
                    b'P' if !skipping => {
                        if let Some(p) = decode::<Parse>(&frame) {
                            let statement = Arc::new(state.statement(&p.query, p.type_oids));
                            c.statements.insert(p.name.unwrap_or_default(), statement);
                        }
                    }
                    b'B' if !skipping => {
                        if let Some(b) = decode::<Bind>(&frame) {
                            let statement = c
                                .statements
                                .get(&b.statement_name.unwrap_or_default())
                                .cloned()
                                .unwrap_or_else(|| Arc::new(state.statement("", Vec::new())));
                            let params: Vec<serde_json::Value> = b
                                .parameters
                                .iter()
                                .enumerate()
                                .map(|(i, v)| {
                                    let format = match b.parameter_format_codes.len() {
                                        0 => 0,
                                        1 => b.parameter_format_codes[0],
                                        _ => b.parameter_format_codes.get(i).copied().unwrap_or(0),
                                    };
                                    sql::param(
                                        v.as_deref(),
                                        format == 1,
                                        statement.oids.get(i).copied().unwrap_or(0),
                                    )
                                })
                                .collect();
                            c.portals
                                .insert(b.portal_name.unwrap_or_default(), (statement, params));
                        }
                    }
                    b'E' if !skipping => {
                        let portal = decode::<Execute>(&frame)
                            .and_then(|e| e.name)
                            .unwrap_or_default();
                        let (statement, params) =
                            c.portals.get(&portal).cloned().unwrap_or_else(|| {
                                (Arc::new(state.statement("", Vec::new())), Vec::new())
                            });
                        let record = state.record(conn_id, &c, &statement, &params);
                        decision = state.decide(&mut c, &record);
                        push(&mut c, record, false, &mut decision, &mut forward);
                    }
                    b'S' => {
                        c.skip_until_sync = false;
                        c.queue.push_back(Item::Sync);
                    }
                    // The server would ignore these until Sync after an error.
                    b'P' | b'B' | b'E' | b'D' | b'C' | b'H' if skipping => forward = false,
                    _ => {}
                }
            }
            match decision {
                Decision::Latency(delay) => {
                    // What came before it goes now; it and what follows wait.
                    if !out.is_empty() && upstream.write_all(&out).await.is_err() {
                        return;
                    }
                    out.clear();
                    tokio::time::sleep(delay).await;
                }
                Decision::Reset => {
                    let left = {
                        let mut c = conn.lock().unwrap_or_else(|p| p.into_inner());
                        take_finished(&mut c)
                    };
                    for r in left {
                        state.keep(r);
                    }
                    return;
                }
                Decision::Error { .. } => {
                    // A simple Query answered with nothing in flight: answer it now.
                    let answer = {
                        let mut c = conn.lock().unwrap_or_else(|p| p.into_inner());
                        injected_simple_answers(state, &mut c)
                    };
                    if !answer.is_empty() {
                        let mut w = client_w.lock().await;
                        if w.write_all(&answer).await.is_err() {
                            return;
                        }
                    }
                }
                Decision::Pass | Decision::Ambiguous => {}
            }
            if forward {
                out.extend_from_slice(&frame);
            }
            if frame[0] == b'X' {
                let _ = upstream.write_all(&out).await;
                return;
            }
        }
        if !out.is_empty() && upstream.write_all(&out).await.is_err() {
            return;
        }
    }
}

/// Queues a statement's record, applying the decision to it.
fn push(
    c: &mut Conn,
    mut record: DbStatementRecord,
    simple: bool,
    decision: &mut Decision,
    forward: &mut bool,
) {
    let mut injected = None;
    let mut close_after = false;
    match decision {
        Decision::Pass => {}
        Decision::Latency(d) => {
            record.delay_us = d.as_micros() as i64;
            record.fault = Some("latency");
        }
        Decision::Error { sqlstate, message } => {
            record.fault = Some("error");
            record.sqlstate = Some(sqlstate.clone());
            record.error = Some(message.clone());
            injected = Some(error_frame(sqlstate, message));
            *forward = false;
            if !simple {
                c.skip_until_sync = true;
            }
        }
        Decision::Reset => {
            record.fault = Some("reset");
            record.error = Some("connection closed by reprod (reset fault)".to_string());
            *forward = false;
        }
        Decision::Ambiguous => {
            record.fault = Some("ambiguous");
            close_after = true;
        }
    }
    c.queue.push_back(Item::Statement(Box::new(Pending {
        simple,
        record,
        finished: false,
        injected,
        close_after,
    })));
}

/// Injected simple-protocol answers at the front of the queue (nothing before them is
/// waiting on the server): each an ErrorResponse and a ReadyForQuery, in order.
fn injected_simple_answers(state: &State, c: &mut Conn) -> BytesMut {
    let mut out = BytesMut::new();
    while let Some(Item::Statement(p)) = c.queue.front()
        && p.simple
        && p.injected.is_some()
    {
        let Some(Item::Statement(p)) = c.queue.pop_front() else {
            break;
        };
        if let Some(e) = &p.injected {
            out.extend_from_slice(e);
        }
        out.extend_from_slice(&ready_frame(c.status));
        let mut record = p.record;
        record.tx = c.tx;
        record.tx_status = Some(c.status as char);
        state.keep(record);
    }
    out
}

/// Server → client: frames each message, completes statements, forwards.
async fn backend(
    state: &State,
    conn: &Mutex<Conn>,
    mut upstream: tokio::net::tcp::OwnedReadHalf,
    client_w: &tokio::sync::Mutex<OwnedWriteHalf>,
) {
    let mut buf = BytesMut::with_capacity(64 * 1024);
    loop {
        match upstream.read_buf(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        let mut out = BytesMut::new();
        let mut close = false;
        loop {
            let frame = match next_frame(&mut buf) {
                Ok(Some(frame)) => frame,
                Ok(None) => break,
                Err(_) => return,
            };
            let mut c = conn.lock().unwrap_or_else(|p| p.into_inner());
            match frame[0] {
                b'C' | b'E' | b'I' | b's' => {
                    let now = state.clock.now_us();
                    if let Some(p) = current(&mut c.queue) {
                        match frame[0] {
                            b'C' => {
                                if let Some(done) = decode::<CommandComplete>(&frame) {
                                    p.record.rows = sql::tag_rows(&done.tag).map(|n| {
                                        n + if p.simple {
                                            p.record.rows.unwrap_or(0)
                                        } else {
                                            0
                                        }
                                    });
                                    p.record.tag = Some(match &p.record.tag {
                                        Some(t) if p.simple => format!("{t}; {}", done.tag),
                                        _ => done.tag,
                                    });
                                }
                            }
                            b'E' => {
                                if let Some(e) = decode::<ErrorResponse>(&frame) {
                                    for (code, value) in e.fields {
                                        match code {
                                            b'C' => p.record.sqlstate = Some(value),
                                            b'M' => {
                                                p.record.error = Some(sql::bounded(&value, 512))
                                            }
                                            _ => {}
                                        }
                                    }
                                }
                            }
                            b's' => p.record.tag = Some("(portal suspended)".to_string()),
                            _ => {}
                        }
                        p.record.done_us = now;
                        // A simple Query ends at ReadyForQuery; an Execute at its answer.
                        p.finished = !p.simple;
                        if p.close_after {
                            close = true;
                        }
                    }
                    if close {
                        // The commit ran; its answer is lost with the connection.
                        let done = take_finished(&mut c);
                        drop(c);
                        for r in done {
                            state.keep(r);
                        }
                        break;
                    }
                    move_finished(&mut c);
                    out.extend_from_slice(&frame);
                }
                b'Z' => {
                    let status = frame.get(5).copied().unwrap_or(b'I');
                    // Everything up to the first Sync (or the simple Query) is answered now;
                    // injected errors go out just before this ReadyForQuery, in order.
                    let mut batch = Vec::new();
                    while let Some(item) = c.queue.pop_front() {
                        match item {
                            Item::Sync => break,
                            Item::Statement(p) => {
                                let simple = p.simple && p.injected.is_none();
                                if let Some(e) = &p.injected {
                                    out.extend_from_slice(e);
                                }
                                let mut record = p.record;
                                if !p.finished && p.injected.is_none() && !p.simple {
                                    record.error.get_or_insert_with(|| {
                                        "not run: an earlier statement of its pipeline failed"
                                            .to_string()
                                    });
                                }
                                if record.done_us == 0 {
                                    record.done_us = state.clock.now_us();
                                }
                                batch.push(record);
                                if simple {
                                    break;
                                }
                            }
                        }
                    }
                    let mut answered = std::mem::take(&mut c.answered);
                    answered.extend(batch);
                    assign_transactions(&mut c, &mut answered, status);
                    c.status = status;
                    out.extend_from_slice(&frame);
                    out.extend_from_slice(&injected_simple_answers(state, &mut c));
                    drop(c);
                    for r in answered {
                        state.keep(r);
                    }
                }
                _ => out.extend_from_slice(&frame),
            }
        }
        if !out.is_empty() {
            let mut w = client_w.lock().await;
            if w.write_all(&out).await.is_err() {
                return;
            }
        }
        if close {
            return;
        }
    }
}

/// The statement the next completion message answers: the first one not yet answered that
/// reached the server.
fn current(queue: &mut VecDeque<Item>) -> Option<&mut Pending> {
    queue.iter_mut().find_map(|item| match item {
        Item::Statement(p) if !p.finished && p.injected.is_none() => Some(&mut **p),
        _ => None,
    })
}

/// Moves answered extended-protocol statements at the front of the queue to `answered`.
fn move_finished(c: &mut Conn) {
    while let Some(Item::Statement(p)) = c.queue.front()
        && p.finished
    {
        if let Some(Item::Statement(p)) = c.queue.pop_front() {
            c.answered.push(p.record);
        }
    }
}

/// Everything answered or pending, for a connection about to close.
fn take_finished(c: &mut Conn) -> Vec<DbStatementRecord> {
    let mut out = std::mem::take(&mut c.answered);
    for item in c.queue.drain(..) {
        if let Item::Statement(p) = item {
            out.push(p.record);
        }
    }
    out
}

/// Gives each statement of a batch its transaction: a BEGIN (or the server's status turning
/// to in-transaction) opens one, COMMIT or ROLLBACK closes it.
fn assign_transactions(c: &mut Conn, batch: &mut [DbStatementRecord], status: u8) {
    for r in batch.iter_mut() {
        if c.tx.is_none() && (r.kind == StatementKind::Begin.name() || c.status != b'I') {
            c.next_tx += 1;
            c.tx = Some(c.next_tx);
        }
        r.tx = c.tx;
        r.tx_status = Some(status as char);
        if r.kind == StatementKind::Commit.name() || r.kind == StatementKind::Rollback.name() {
            c.tx = None;
        }
    }
    if status == b'I' {
        c.tx = None;
    } else if c.tx.is_none() {
        c.next_tx += 1;
        c.tx = Some(c.next_tx);
    }
}
