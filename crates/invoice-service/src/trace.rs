//! W3C trace context (`traceparent`): continue the caller's trace or start one, and hand a child
//! span to every outgoing call so dependency calls and emails join back to the operation.

use std::fmt::Write as _;

/// One span of a W3C trace: `00-{trace_id}-{span_id}-{flags}`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TraceContext {
    /// 32 lowercase hex digits, never all zero.
    pub trace_id: String,
    /// 16 lowercase hex digits, never all zero.
    pub span_id: String,
    /// 2 hex digits (`01` = sampled).
    pub flags: String,
}

impl TraceContext {
    /// Parses a `traceparent` header value; `None` when it is not a valid version-00 header.
    pub fn parse(header: &str) -> Option<TraceContext> {
        let mut parts = header.trim().split('-');
        let (version, trace_id, span_id, flags) =
            (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
        if parts.next().is_some() || version != "00" {
            return None;
        }
        let valid = |s: &str, len: usize| {
            s.len() == len
                && s.bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
                && s.bytes().any(|b| b != b'0')
        };
        if !valid(trace_id, 32) || !valid(span_id, 16) || flags.len() != 2 {
            return None;
        }
        if !flags.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        Some(TraceContext {
            trace_id: trace_id.to_string(),
            span_id: span_id.to_string(),
            flags: flags.to_ascii_lowercase(),
        })
    }

    /// Starts a new sampled trace.
    pub fn new_root() -> TraceContext {
        TraceContext {
            trace_id: random_hex(16),
            span_id: random_hex(8),
            flags: "01".to_string(),
        }
    }

    /// Continues `incoming` when it parses, with a new span of our own; starts a trace otherwise.
    pub fn continue_from(incoming: Option<&str>) -> TraceContext {
        match incoming.and_then(TraceContext::parse) {
            Some(parent) => parent.child(),
            None => TraceContext::new_root(),
        }
    }

    /// A new span in the same trace.
    pub fn child(&self) -> TraceContext {
        TraceContext {
            trace_id: self.trace_id.clone(),
            span_id: random_hex(8),
            flags: self.flags.clone(),
        }
    }

    /// The `traceparent` header value.
    pub fn header(&self) -> String {
        format!("00-{}-{}-{}", self.trace_id, self.span_id, self.flags)
    }
}

/// `bytes` random bytes as lowercase hex, never all zero.
pub fn random_hex(bytes: usize) -> String {
    loop {
        let mut s = String::with_capacity(bytes * 2);
        let mut nonzero = false;
        for _ in 0..bytes {
            let b = fastrand::u8(..);
            nonzero |= b != 0;
            let _ = write!(s, "{b:02x}");
        }
        if nonzero {
            return s;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn continues_a_valid_parent_with_a_new_span() {
        let parent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let ctx = TraceContext::continue_from(Some(parent));
        assert_eq!(ctx.trace_id, "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_ne!(ctx.span_id, "00f067aa0ba902b7");
        assert_eq!(ctx.flags, "01");
        assert_eq!(TraceContext::parse(&ctx.header()), Some(ctx));
    }

    #[test]
    fn rejects_malformed_parents() {
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-xx",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
        ] {
            assert_eq!(TraceContext::parse(bad), None, "{bad:?}");
        }
        let fresh = TraceContext::continue_from(Some("garbage"));
        assert_eq!(fresh.trace_id.len(), 32);
    }
}
