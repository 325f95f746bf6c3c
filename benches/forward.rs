//! Frame forwarding throughput (DESIGN §7): the server → client scan every read buffer of a
//! session goes through, over buffers of DataRow frames as a large SELECT returns them. The
//! scan reads frame headers only and forwards whole buffers, so this is the per-byte cost of
//! the hot path besides the socket I/O itself.

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use std::hint::black_box;

/// `n` DataRow frames of `width` bytes of payload each (one text column).
fn data_rows(n: usize, width: usize) -> Vec<u8> {
    let mut buf = Vec::with_capacity(n * (width + 11));
    for _ in 0..n {
        buf.push(b'D');
        buf.extend_from_slice(&((4 + 2 + 4 + width) as i32).to_be_bytes());
        buf.extend_from_slice(&1i16.to_be_bytes());
        buf.extend_from_slice(&(width as i32).to_be_bytes());
        buf.extend(std::iter::repeat_n(b'x', width));
    }
    buf
}

fn forward(c: &mut Criterion) {
    let mut group = c.benchmark_group("forward_datarows");
    // 64 KiB buffers of small, medium and wide rows.
    for width in [16usize, 100, 1000] {
        let n = (64 * 1024) / (width + 11);
        let buf = data_rows(n, width);
        group.throughput(Throughput::Bytes(buf.len() as u64));
        group.bench_with_input(BenchmarkId::from_parameter(width), &buf, |b, buf| {
            b.iter(|| {
                let forwarded = pgshift::session::scan_server_buffer(black_box(buf));
                assert_eq!(forwarded, buf.len());
                forwarded
            })
        });
    }
    group.finish();
}

criterion_group!(benches, forward);
criterion_main!(benches);
