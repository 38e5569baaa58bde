//! Property tests of the response reader: a byte-level peer (the far end of an in-memory
//! stream) answers with random well-formed responses, cut into random pieces, and with random
//! mutations of them — bytes flipped, inserted, dropped, the stream cut short, lengths and chunk
//! sizes made huge. The reader must return the right body for the well-formed ones and never
//! panic, hang or accept a body larger than its bound for any.
//!
//! `REPROD_HTTP_CASES` sets the number of cases (default 100,000, a few seconds);
//! `bench/http_fuzz.sh` runs ten million in release.

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::{MAX_BODY_BYTES, round_trip};

const REQUEST: &[u8] = b"GET / HTTP/1.1\r\nhost: x\r\n\r\n";

fn cases() -> u64 {
    std::env::var("REPROD_HTTP_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000)
}

/// A well-formed response and the status and body it must read as.
fn valid(rng: &mut fastrand::Rng) -> (Vec<u8>, u16, Vec<u8>) {
    let status = [200u16, 201, 202, 204, 301, 302, 400, 404, 429, 500, 503][rng.usize(..11)];
    let body_len = if status == 204 { 0 } else { rng.usize(..300) };
    let body: Vec<u8> = (0..body_len).map(|_| rng.u8(..)).collect();
    let mut out = Vec::new();
    if rng.u8(..10) == 0 {
        out.extend_from_slice(b"HTTP/1.1 100 Continue\r\n\r\n");
    }
    out.extend_from_slice(format!("HTTP/1.1 {status} X\r\n").as_bytes());
    for _ in 0..rng.usize(..5) {
        out.extend_from_slice(format!("x-h{}: {}\r\n", rng.u16(..), rng.u32(..)).as_bytes());
    }
    if rng.bool() {
        out.extend_from_slice(format!("retry-after: {}\r\n", rng.u8(..)).as_bytes());
    }
    match rng.u8(..3) {
        0 if status != 204 => {
            out.extend_from_slice(b"transfer-encoding: chunked\r\n\r\n");
            let mut rest = &body[..];
            while !rest.is_empty() {
                let n = rng.usize(1..=rest.len().min(64));
                out.extend_from_slice(format!("{n:x}\r\n").as_bytes());
                out.extend_from_slice(&rest[..n]);
                out.extend_from_slice(b"\r\n");
                rest = &rest[n..];
            }
            out.extend_from_slice(b"0\r\n\r\n");
        }
        1 if status != 204 => {
            out.extend_from_slice(b"connection: close\r\n\r\n");
            out.extend_from_slice(&body);
        }
        _ => {
            out.extend_from_slice(format!("content-length: {}\r\n\r\n", body.len()).as_bytes());
            out.extend_from_slice(&body);
        }
    }
    (out, status, body)
}

/// `response` damaged at random, in one of the ways servers and networks damage them.
fn mutate(rng: &mut fastrand::Rng, mut response: Vec<u8>) -> Vec<u8> {
    for _ in 0..rng.usize(1..4) {
        if response.is_empty() {
            break;
        }
        let at = rng.usize(..response.len());
        match rng.u8(..7) {
            0 => response[at] = rng.u8(..),
            1 => response.insert(at, [b'\r', b'\n', b':', b' ', b'0', b'f'][rng.usize(..6)]),
            2 => {
                response.remove(at);
            }
            3 => response.truncate(at),
            4 => {
                let huge: &[u8] = [
                    &b"ffffffffffffffff"[..],
                    b"18446744073709551616",
                    b"99999999999999999999",
                    b"-1",
                    b"+5",
                ][rng.usize(..5)];
                response.splice(at..at, huge.iter().copied());
            }
            5 => {
                let header: &[u8] = [
                    &b"content-length: 18446744073709551615\r\n"[..],
                    b"content-length: 3000000\r\n",
                    b"transfer-encoding: chunked\r\n",
                    b"content-length: 5\r\ncontent-length: 6\r\n",
                ][rng.usize(..4)];
                let head_end = response
                    .windows(2)
                    .position(|w| w == b"\r\n")
                    .map_or(0, |i| i + 2);
                response.splice(head_end..head_end, header.iter().copied());
            }
            _ => {
                let tail: Vec<u8> = (0..rng.usize(..64)).map(|_| rng.u8(..)).collect();
                response.extend_from_slice(&tail);
            }
        }
    }
    response
}

/// Plays `response` to the reader in random pieces, then closes; what the reader made of it.
async fn exchange(
    rng: &mut fastrand::Rng,
    response: &[u8],
) -> Result<(super::Response, bool), super::Failure> {
    let (mut client, mut server) = tokio::io::duplex(rng.usize(1..=256));
    let pieces: Vec<usize> = (0..response.len().div_ceil(8))
        .map(|_| rng.usize(1..=97))
        .collect();
    let serve = async move {
        let mut request = vec![0u8; REQUEST.len()];
        if server.read_exact(&mut request).await.is_err() {
            return;
        }
        let mut rest = response;
        for n in pieces {
            if rest.is_empty() {
                break;
            }
            let n = n.min(rest.len());
            if server.write_all(&rest[..n]).await.is_err() {
                return;
            }
            rest = &rest[n..];
        }
        if !rest.is_empty() {
            let _ = server.write_all(rest).await;
        }
        // Dropping the server end closes the stream.
    };
    // The reader's end closes as soon as it is done, as a real client's would, so a peer
    // still writing is never left blocked.
    let read = async move {
        let mut leftover = Vec::new();
        let result = round_trip(&mut client, &mut leftover, REQUEST, false, false).await;
        drop(client);
        result
    };
    let (result, ()) = tokio::join!(read, serve);
    result
}

#[test]
fn well_formed_responses_read_exactly_and_damaged_ones_never_panic() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    let total = cases();
    let mut rng = fastrand::Rng::with_seed(0x5eed);
    let (mut ok, mut errors) = (0u64, 0u64);
    runtime.block_on(async {
        for case in 0..total {
            let (response, status, body) = valid(&mut rng);
            if case % 2 == 0 {
                let (read, _) = exchange(&mut rng, &response).await.unwrap_or_else(|f| {
                    panic!(
                        "case {case}: {:?} for {:?}",
                        f.error,
                        String::from_utf8_lossy(&response)
                    )
                });
                assert_eq!((read.status, &read.body), (status, &body), "case {case}");
                ok += 1;
            } else {
                let damaged = mutate(&mut rng, response);
                match exchange(&mut rng, &damaged).await {
                    Ok((read, _)) => {
                        assert!(read.body.len() <= MAX_BODY_BYTES, "case {case}");
                        ok += 1;
                    }
                    Err(f) => {
                        assert!(!f.unsent, "the request was written in full");
                        errors += 1;
                    }
                }
            }
        }
    });
    assert_eq!(ok + errors, total);
    assert!(
        errors > total / 10,
        "mutations should break many responses: {errors} of {total}"
    );
    eprintln!("{total} cases: {ok} read, {errors} refused as malformed");
}

/// The reproducer of the panic that once crashed a run: a chunk size of 2^64 - 1.
#[test]
fn a_chunk_size_of_sixteen_fs_is_an_error_not_a_panic() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    let mut rng = fastrand::Rng::with_seed(1);
    for response in [
        &b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nffffffffffffffff\r\nabc"[..],
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nfffffffffffffffff\r\n",
        b"HTTP/1.1 200 OK\r\ncontent-length: 3000000\r\n\r\nabc",
        b"HTTP/1.1 200 OK\r\ncontent-length: 18446744073709551616\r\n\r\n",
    ] {
        let result = runtime.block_on(exchange(&mut rng, response));
        let error = result
            .err()
            .map(|f| format!("{:?}", f.error))
            .unwrap_or_default();
        assert!(
            error.contains("too large")
                || error.contains("larger than")
                || error.contains("malformed"),
            "{}: {error}",
            String::from_utf8_lossy(response)
        );
    }
}
