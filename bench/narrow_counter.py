"""A counter with a read-modify-write across one turn of the event loop, for bench/overlap.py.

POST /add/KEY reads KEY's count from SQLite, yields once to the asyncio loop, and writes the
count plus one: two requests handled in the same turn both read the old count, and one add is
lost. The window is one loop turn, far narrower than a millisecond. Written for the benchmark;
shares nothing with reprod. Usage: python3 narrow_counter.py PORT sqlite:PATH
"""

import asyncio, json, sqlite3, sys
PORT, URL = int(sys.argv[1]), sys.argv[2]
db = sqlite3.connect(URL.split(":", 1)[1], isolation_level=None)
db.execute("CREATE TABLE IF NOT EXISTS counters (k TEXT PRIMARY KEY, n INTEGER NOT NULL)")

async def add(key):
    row = db.execute("SELECT n FROM counters WHERE k = ?", (key,)).fetchone()
    n = (row[0] if row else 0) + 1
    await asyncio.sleep(0)  # one turn of the event loop between the read and the write
    db.execute("INSERT INTO counters (k, n) VALUES (?, ?) ON CONFLICT (k) DO UPDATE SET n = excluded.n", (key, n))
    return n

async def serve(reader, writer):
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            method, path, _ = lines[0].split(" ", 2)
            length = 0
            for line in lines[1:]:
                name, _, value = line.partition(":")
                if name.strip().lower() == "content-length":
                    length = int(value.strip())
            if length:
                await reader.readexactly(length)
            body = b""
            if method == "POST":
                body = json.dumps({"n": await add(path.rsplit("/", 1)[-1])}).encode()
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n%s" % (len(body), body))
            await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError):
        pass
    finally:
        writer.close()

async def main():
    server = await asyncio.start_server(serve, "127.0.0.1", PORT)
    print("listening", flush=True)
    await server.serve_forever()

asyncio.run(main())
