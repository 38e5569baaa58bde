//! The identifiers operations carry and the history stores as text: W3C trace and span ids and
//! UUIDs. Events carry trace and span ids as numbers; both the engine (building requests) and the
//! writer (building rows) turn them into text with a hex table, since `format!("{:x}")` costs
//! several times more on paths taken for every request.

/// A W3C trace id: 128 bits, never all zeros.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct TraceId(u128);

impl TraceId {
    /// From two random words; the one all-zero id (invalid in W3C trace context) becomes 1.
    pub fn from_words(hi: u64, lo: u64) -> TraceId {
        TraceId(((u128::from(hi) << 64) | u128::from(lo)).max(1))
    }

    /// Appends its 32 lowercase hex digits.
    pub fn push_to(self, out: &mut String) {
        push_hex(out, (self.0 >> 64) as u64, 16);
        push_hex(out, self.0 as u64, 16);
    }
}

impl std::fmt::Display for TraceId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:032x}", self.0)
    }
}

/// Appends `00-{trace id}-{span id}-01`: the `traceparent` of a sampled span.
pub fn push_traceparent(out: &mut String, trace: TraceId, span_id: u64) {
    out.push_str("00-");
    trace.push_to(out);
    out.push('-');
    push_hex(out, span_id, 16);
    out.push_str("-01");
}

/// Appends the low `digits` (at most 16) hex digits of `value`, lowercase, zero-padded.
pub fn push_hex(out: &mut String, value: u64, digits: u32) {
    let mut text = [0; 16];
    for (pair, byte) in text.chunks_exact_mut(2).zip(value.to_be_bytes()) {
        pair.copy_from_slice(&HEX_PAIRS[usize::from(byte)]);
    }
    // Hex digits are ASCII.
    out.push_str(std::str::from_utf8(&text[16 - digits.min(16) as usize..]).unwrap_or_default());
}

/// The two hex digits of every byte.
const HEX_PAIRS: [[u8; 2]; 256] = {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut pairs = [[0; 2]; 256];
    let mut byte = 0;
    while byte < 256 {
        pairs[byte] = [DIGITS[byte >> 4], DIGITS[byte & 0xF]];
        byte += 1;
    }
    pairs
};

/// A version-4 UUID made of two random words.
pub fn uuid(hi: u64, lo: u64) -> String {
    let hi = (hi & 0xFFFF_FFFF_FFFF_0FFF) | 0x4000;
    let lo = (lo & 0x3FFF_FFFF_FFFF_FFFF) | 0x8000_0000_0000_0000;
    let mut s = String::with_capacity(36);
    push_hex(&mut s, hi >> 32, 8);
    s.push('-');
    push_hex(&mut s, hi >> 16, 4);
    s.push('-');
    push_hex(&mut s, hi, 4);
    s.push('-');
    push_hex(&mut s, lo >> 48, 4);
    s.push('-');
    push_hex(&mut s, lo, 12);
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_matches_the_formatter() {
        let mut value = 0x1234_5678_9abc_def0_u64;
        for digits in [1, 4, 8, 12, 16] {
            for _ in 0..100 {
                value = value.rotate_left(7).wrapping_mul(0x9E37_79B9_7F4A_7C15);
                let mut s = String::new();
                push_hex(&mut s, value, digits);
                let full = format!("{value:016x}");
                assert_eq!(s, full[16 - digits as usize..]);
            }
        }
    }

    #[test]
    fn uuids_are_version_4() {
        let u = uuid(u64::MAX, 0);
        assert_eq!(u.len(), 36);
        assert_eq!(&u[14..15], "4");
        assert!(matches!(&u[19..20], "8" | "9" | "a" | "b"), "{u}");
        let (hi, lo) = (0x0123_4567_89ab_cdef, 0xfedc_ba98_7654_3210);
        assert_eq!(uuid(hi, lo), "01234567-89ab-4def-bedc-ba9876543210");
    }

    #[test]
    fn traceparents_are_w3c_shaped_and_never_all_zero() {
        let mut tp = String::new();
        push_traceparent(
            &mut tp,
            TraceId::from_words(0x0af7_6519_16cd_43dd, 0x8448_eb21_1c80_319c),
            0xb7ad_6b71_6920_3331,
        );
        assert_eq!(
            tp,
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
        );
        let mut zero = String::new();
        TraceId::from_words(0, 0).push_to(&mut zero);
        assert_eq!(zero, format!("{:032x}", 1));
        let any = TraceId::from_words(u64::MAX, 7);
        let mut pushed = String::new();
        any.push_to(&mut pushed);
        assert_eq!(pushed, any.to_string());
    }
}
