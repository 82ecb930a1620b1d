//! The deterministic byte pattern every transfer carries, so the receiver can verify each byte.
//!
//! A stream is cut into pages of [`PAGE`] bytes. Every page carries the same pseudo-random body
//! (derived from the stream's seed), except its first [`HEADER`] bytes, which hold the seed
//! and the page number. So any lost, duplicated, reordered or shifted run of bytes — inside a
//! page (the random body no longer lines up) or of whole pages (the page number is wrong) — and
//! any byte from another stream (other seed) is detected, while generating and checking cost
//! one `memcpy` / `memcmp` per byte: fast enough not to cap loopback figures.

use crate::error::{BenchError, Result};

/// Page length of the pattern. 64 KiB: large enough that the per-page header costs nothing,
/// small enough that generating a stream's page (per seed) takes microseconds.
pub const PAGE: usize = 64 * 1024;

/// Bytes at the start of each page that hold the page number and the seed.
pub const HEADER: usize = 16;

/// The pattern of one stream, identified by its seed.
#[derive(Debug, Clone)]
pub struct Pattern {
    seed: u64,
    body: Vec<u8>,
}

/// SplitMix64: a tiny, well-mixed generator; the pattern needs determinism, not secrecy.
fn splitmix(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

impl Pattern {
    /// The pattern for `seed`.
    pub fn new(seed: u64) -> Pattern {
        let mut state = seed;
        let mut body = Vec::with_capacity(PAGE);
        while body.len() < PAGE {
            body.extend_from_slice(&splitmix(&mut state).to_le_bytes());
        }
        body.truncate(PAGE);
        Pattern { seed, body }
    }

    /// The seed of this pattern.
    pub fn seed(&self) -> u64 {
        self.seed
    }

    fn header(&self, page: u64) -> [u8; HEADER] {
        let mut h = [0u8; HEADER];
        h[..8].copy_from_slice(&self.seed.to_le_bytes());
        h[8..].copy_from_slice(&page.to_le_bytes());
        h
    }

    /// The expected bytes of the segment starting at `offset` that lies within one page
    /// (`buf.len() <= PAGE - offset % PAGE`), written into `buf`.
    fn fill_segment(&self, offset: u64, buf: &mut [u8]) {
        let page = offset / PAGE as u64;
        let within = (offset % PAGE as u64) as usize;
        let end = within + buf.len();
        buf.copy_from_slice(&self.body[within..end]);
        if within < HEADER {
            let h = self.header(page);
            let n = (HEADER - within).min(buf.len());
            buf[..n].copy_from_slice(&h[within..within + n]);
        }
    }

    /// Writes the pattern bytes of stream positions `offset .. offset + buf.len()` into `buf`.
    pub fn fill(&self, mut offset: u64, mut buf: &mut [u8]) {
        while !buf.is_empty() {
            let within = (offset % PAGE as u64) as usize;
            let take = (PAGE - within).min(buf.len());
            let (seg, rest) = buf.split_at_mut(take);
            self.fill_segment(offset, seg);
            offset += take as u64;
            buf = rest;
        }
    }

    /// Rewrites only the page headers of `buf` for stream position `offset`. Valid when `buf`
    /// already holds the pattern for a position congruent to `offset` modulo [`PAGE`]: the
    /// bodies are then already right. Lets a writer reuse one filled buffer for a whole stream.
    pub fn refill_headers(&self, offset: u64, buf: &mut [u8]) {
        let mut pos = 0usize;
        while pos < buf.len() {
            let abs = offset + pos as u64;
            let within = (abs % PAGE as u64) as usize;
            if within < HEADER {
                let h = self.header(abs / PAGE as u64);
                let n = (HEADER - within).min(buf.len() - pos);
                buf[pos..pos + n].copy_from_slice(&h[within..within + n]);
            }
            pos += PAGE - within;
        }
    }
}

/// Checks a received stream against its [`Pattern`], chunk by chunk, in order.
#[derive(Debug)]
pub struct Verifier {
    pattern: Pattern,
    offset: u64,
    scratch: Vec<u8>,
}

impl Verifier {
    /// A verifier expecting the stream of `pattern` from position 0.
    pub fn new(pattern: Pattern) -> Verifier {
        Verifier {
            pattern,
            offset: 0,
            scratch: vec![0u8; HEADER],
        }
    }

    /// Bytes verified so far.
    pub fn verified(&self) -> u64 {
        self.offset
    }

    /// Checks the next received bytes; on a mismatch names the first wrong byte.
    pub fn check(&mut self, mut data: &[u8]) -> Result<()> {
        while !data.is_empty() {
            let within = (self.offset % PAGE as u64) as usize;
            let take = (PAGE - within).min(data.len());
            let (seg, rest) = data.split_at(take);
            // The header part (if any) is compared against a freshly built header, the body
            // against the shared page body.
            let header_len = HEADER.saturating_sub(within).min(take);
            if header_len > 0 {
                self.pattern
                    .fill_segment(self.offset, &mut self.scratch[..header_len]);
                if seg[..header_len] != self.scratch[..header_len] {
                    return Err(self.mismatch(seg, 0));
                }
            }
            let body_start = within + header_len;
            if seg[header_len..] != self.pattern.body[body_start..within + take] {
                return Err(self.mismatch(seg, header_len));
            }
            self.offset += take as u64;
            data = rest;
        }
        Ok(())
    }

    /// The error for the first differing byte of `seg` (at or after `from`), a segment
    /// starting at the current offset.
    fn mismatch(&self, seg: &[u8], from: usize) -> BenchError {
        let mut expected = vec![0u8; seg.len()];
        self.pattern.fill_segment(self.offset, &mut expected);
        let i = (from..seg.len())
            .find(|&i| seg[i] != expected[i])
            .unwrap_or(from);
        BenchError::Corrupt {
            offset: self.offset + i as u64,
            expected: expected.get(i).copied().unwrap_or(0),
            got: seg.get(i).copied().unwrap_or(0),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stream(seed: u64, len: usize) -> Vec<u8> {
        let mut v = vec![0u8; len];
        Pattern::new(seed).fill(0, &mut v);
        v
    }

    #[test]
    fn fill_at_any_offset_matches_the_whole_stream() {
        let p = Pattern::new(7);
        let whole = stream(7, 3 * PAGE + 100);
        for (off, len) in [
            (0, 10),
            (5, 20),
            (PAGE - 3, 40),
            (2 * PAGE + 1, PAGE),
            (17, 2 * PAGE),
        ] {
            let mut part = vec![0u8; len];
            p.fill(off as u64, &mut part);
            assert_eq!(part, whole[off..off + len], "offset {off} len {len}");
        }
    }

    #[test]
    fn verifier_accepts_the_stream_in_arbitrary_chunks() {
        let data = stream(42, 5 * PAGE + 333);
        let mut v = Verifier::new(Pattern::new(42));
        let mut pos = 0;
        let mut step = 1;
        while pos < data.len() {
            let end = (pos + step).min(data.len());
            v.check(&data[pos..end]).expect("intact stream must verify");
            pos = end;
            step = step * 3 + 7;
        }
        assert_eq!(v.verified(), data.len() as u64);
    }

    #[test]
    fn verifier_reports_the_offset_of_a_flipped_body_byte() {
        let mut data = stream(1, 2 * PAGE);
        data[PAGE + 500] ^= 0x01;
        let mut v = Verifier::new(Pattern::new(1));
        match v.check(&data) {
            Err(BenchError::Corrupt { offset, .. }) => assert_eq!(offset, PAGE as u64 + 500),
            other => panic!("expected corruption, got {other:?}"),
        }
    }

    #[test]
    fn verifier_detects_a_duplicated_page() {
        let data = stream(3, 3 * PAGE);
        let mut dup = data[..2 * PAGE].to_vec();
        dup.extend_from_slice(&data[PAGE..2 * PAGE]);
        let mut v = Verifier::new(Pattern::new(3));
        match v.check(&dup) {
            // The seed matches; the page number (after the seed) is the first wrong byte.
            Err(BenchError::Corrupt { offset, .. }) => assert_eq!(offset, 2 * PAGE as u64 + 8),
            other => panic!("expected corruption, got {other:?}"),
        }
    }

    #[test]
    fn verifier_detects_a_lost_byte() {
        let mut data = stream(9, PAGE);
        data.remove(1000);
        let mut v = Verifier::new(Pattern::new(9));
        assert!(matches!(v.check(&data), Err(BenchError::Corrupt { .. })));
    }

    #[test]
    fn verifier_rejects_another_streams_bytes() {
        let data = stream(10, 100);
        let mut v = Verifier::new(Pattern::new(11));
        assert!(matches!(
            v.check(&data),
            Err(BenchError::Corrupt { offset: 0, .. })
        ));
    }

    #[test]
    fn refill_headers_turns_one_buffer_into_every_chunk_of_the_stream() {
        let p = Pattern::new(5);
        let chunk = 2 * PAGE;
        let mut buf = vec![0u8; chunk];
        p.fill(0, &mut buf);
        let whole = stream(5, 4 * chunk);
        for k in 0..4 {
            p.refill_headers((k * chunk) as u64, &mut buf);
            assert_eq!(buf, whole[k * chunk..(k + 1) * chunk], "chunk {k}");
        }
    }
}
