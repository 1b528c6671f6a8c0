//! Benchmarks of the Tabadol hub: criterion micro-benchmarks of the inquiry steps
//! (`benches/*.rs`), and the instruments `scripts/bench.sh` runs side by side — a
//! closed-loop gRPC load generator (`bench-load`), a bare mTLS echo server (`bench-echo`)
//! and the events benchmark (`bench-events`). The load generator and echo server started
//! as `../shared/benchkit`'s.

/// Decodes a hex string (whitespace around it is ignored); `flag` names the option in errors.
pub fn decode_hex(flag: &str, s: &str) -> Result<Vec<u8>, String> {
    let s = s.trim();
    if !s.len().is_multiple_of(2) {
        return Err(format!("{flag}: odd number of hex digits ({})", s.len()));
    }
    (0..s.len())
        .step_by(2)
        .map(|i| {
            u8::from_str_radix(s.get(i..i + 2).unwrap_or("?"), 16)
                .map_err(|_| format!("{flag}: invalid hex at offset {i}"))
        })
        .collect()
}
