#!/usr/bin/env python3
"""A small link shortener, standing in for a third-party service reprod's team did not write:
Python's standard library only (http.server, sqlite3), nothing shared with reprod.

  python3 shortener.py --database PATH --listen 127.0.0.1:0 [--migrate]

POST /users {"name", "password"}     -> 201 {"id"}             register
POST /login {"name", "password"}     -> 200 {"token"}          log in
POST /links {"alias", "url"}         -> 201 {"id", "alias"}    (Authorization: Bearer TOKEN)
                                        200 when the alias exists already
GET  /links/ALIAS                     -> 302 to the URL
GET  /health                          -> 200

Creating a link checks whether the user's alias exists, then inserts it: two decisions, with
no unique index, so two requests for one alias that overlap both insert it. That is the bug.
"""

import argparse
import hashlib
import http.server
import json
import secrets
import sqlite3
import sys

SCHEMA = """
CREATE TABLE IF NOT EXISTS users (id INTEGER PRIMARY KEY, name TEXT UNIQUE, password_hash TEXT);
CREATE TABLE IF NOT EXISTS sessions (token TEXT PRIMARY KEY, user_id INTEGER);
CREATE TABLE IF NOT EXISTS links (id INTEGER PRIMARY KEY, owner INTEGER, alias TEXT, url TEXT);
"""


def connect(path):
    db = sqlite3.connect(path, timeout=10, isolation_level=None)
    db.execute("PRAGMA journal_mode = WAL")
    return db


class Handler(http.server.BaseHTTPRequestHandler):
    # Headers and body go out as separate writes; without this, delayed ACKs add 40 ms to each.
    disable_nagle_algorithm = True
    protocol_version = "HTTP/1.1"
    database = None

    def answer(self, status, body, headers=()):
        data = json.dumps(body).encode()
        self.send_response(status)
        for name, value in headers:
            self.send_header(name, value)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def json_body(self):
        length = int(self.headers.get("content-length", "0"))
        try:
            return json.loads(self.rfile.read(length) or b"{}")
        except ValueError:
            return None

    def user(self, db):
        token = self.headers.get("authorization", "").removeprefix("Bearer ").strip()
        row = db.execute("SELECT user_id FROM sessions WHERE token = ?", (token,)).fetchone()
        return row[0] if row else None

    def do_GET(self):
        if self.path == "/health":
            return self.answer(200, {"ok": True})
        db = connect(self.database)
        alias = self.path.removeprefix("/links/")
        row = db.execute("SELECT url FROM links WHERE alias = ?", (alias,)).fetchone()
        if row is None:
            return self.answer(404, {"error": "no such link"})
        self.answer(302, {"location": row[0]}, [("location", row[0])])

    def do_POST(self):
        body = self.json_body()
        if not isinstance(body, dict):
            return self.answer(400, {"error": "send a JSON object"})
        db = connect(self.database)
        if self.path == "/users":
            digest = hashlib.sha256(body.get("password", "").encode()).hexdigest()
            try:
                cur = db.execute(
                    "INSERT INTO users (name, password_hash) VALUES (?, ?)", (body.get("name"), digest)
                )
            except sqlite3.IntegrityError:
                return self.answer(409, {"error": "name taken"})
            return self.answer(201, {"id": cur.lastrowid})
        if self.path == "/login":
            digest = hashlib.sha256(body.get("password", "").encode()).hexdigest()
            row = db.execute(
                "SELECT id FROM users WHERE name = ? AND password_hash = ?", (body.get("name"), digest)
            ).fetchone()
            if row is None:
                return self.answer(401, {"error": "wrong name or password"})
            token = secrets.token_hex(16)
            db.execute("INSERT INTO sessions (token, user_id) VALUES (?, ?)", (token, row[0]))
            return self.answer(200, {"token": token})
        if self.path == "/links":
            owner = self.user(db)
            if owner is None:
                return self.answer(401, {"error": "log in first"})
            alias = body.get("alias")
            existing = db.execute(
                "SELECT id FROM links WHERE owner = ? AND alias = ?", (owner, alias)
            ).fetchone()
            if existing:
                return self.answer(200, {"id": existing[0], "alias": alias})
            cur = db.execute(
                "INSERT INTO links (owner, alias, url) VALUES (?, ?, ?)", (owner, alias, body.get("url"))
            )
            return self.answer(201, {"id": cur.lastrowid, "alias": alias})
        self.answer(404, {"error": "no such endpoint"})

    def log_message(self, fmt, *args):
        sys.stderr.write("%s %s\n" % (self.log_date_time_string(), fmt % args))


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--database", required=True)
    parser.add_argument("--listen", default="127.0.0.1:8000")
    parser.add_argument("--migrate", action="store_true", help="create the tables and exit")
    args = parser.parse_args()
    if args.migrate:
        connect(args.database).executescript(SCHEMA)
        print("migrated", args.database, flush=True)
        return
    host, port = args.listen.rsplit(":", 1)
    Handler.database = args.database
    server = http.server.ThreadingHTTPServer((host, int(port)), Handler)
    print(f"{server.server_address[0]}:{server.server_port} ready: listening on "
          f"http://{host}:{server.server_port}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
