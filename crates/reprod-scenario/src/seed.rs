//! Deriving everything random from the run's one seed: independent streams per caller,
//! operation, endpoint and call, so that adding one never shifts another, and timing never
//! changes what is drawn.

/// SplitMix64 of `seed` and `salt`: the seed of an independent stream.
pub fn mix(seed: u64, salt: u64) -> u64 {
    let mut z = seed ^ salt.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

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

/// Appends the low `digits` hex digits of `value`, lowercase, zero-padded. Operations format
/// trace ids, span ids and UUIDs on the load engine's hot path; `format!("{:x}")` costs several
/// times more.
pub fn push_hex(out: &mut String, value: u64, digits: u32) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for i in (0..digits).rev() {
        let nibble = if i < 16 { (value >> (i * 4)) & 0xF } else { 0 };
        out.push(char::from(DIGITS[nibble as usize]));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streams_differ_and_uuids_are_version_4() {
        assert_ne!(mix(1, 1), mix(1, 2));
        assert_ne!(mix(1, 1), mix(2, 1));
        assert_eq!(mix(7, 3), mix(7, 3));
        let u = uuid(u64::MAX, 0);
        assert_eq!(u.len(), 36);
        assert_eq!(&u[14..15], "4");
        assert!(matches!(&u[19..20], "8" | "9" | "a" | "b"), "{u}");
    }

    #[test]
    fn hex_matches_the_formatter() {
        let mut rng = 0x1234_5678_9abc_def0_u64;
        for digits in [1, 4, 8, 12, 16] {
            for _ in 0..100 {
                rng = mix(rng, 1);
                let mut s = String::new();
                push_hex(&mut s, rng, digits);
                let full = format!("{rng:016x}");
                assert_eq!(s, full[16 - digits as usize..]);
            }
        }
        let (hi, lo) = (0x0123_4567_89ab_cdef, 0xfedc_ba98_7654_3210);
        assert_eq!(uuid(hi, lo), "01234567-89ab-4def-bedc-ba9876543210");
    }
}
