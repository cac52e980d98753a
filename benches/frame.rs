//! The relay's hot code: walking received bytes frame by frame. Measures bytes per second
//! for a pgbench-like request stream (Bind/Execute/Sync) and a large result stream
//! (DataRow frames), as the relay pumps see them.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};

use capgate::protocol::postgres::frame::{FrameCursor, Step};

fn frame(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    out.extend_from_slice(&((body.len() + 4) as u32).to_be_bytes());
    out.extend_from_slice(body);
    out
}

/// Walk `buf` like a pump does, returning how many frames began (so the work is not
/// optimized away).
fn walk(buf: &[u8], inspect: fn(u8) -> bool) -> usize {
    let mut cursor = FrameCursor::new(1 << 30);
    let mut at = 0;
    let mut frames = 0;
    while at < buf.len() {
        match cursor.step(&buf[at..], inspect).expect("valid frames") {
            Step::Pass { n, tag } => {
                frames += tag.is_some() as usize;
                at += n;
            }
            Step::Whole { len, .. } => {
                frames += 1;
                at += len;
            }
            Step::NeedMore { .. } => break,
        }
    }
    frames
}

fn requests() -> Vec<u8> {
    let mut one = Vec::new();
    let mut bind = b"\0P0_1\0\0\x01\0\x01\0\x01\0\0\0\x0512345".to_vec();
    bind.extend_from_slice(&[0, 1, 0, 1]);
    one.extend(frame(b'B', &bind));
    one.extend(frame(b'E', b"\0\0\0\0\0"));
    one.extend(frame(b'S', b""));
    one.repeat(200)
}

fn rows() -> Vec<u8> {
    let mut row = 2u16.to_be_bytes().to_vec();
    for col in [&b"123456"[..], &b"a moderately long text value of a row"[..]] {
        row.extend_from_slice(&(col.len() as i32).to_be_bytes());
        row.extend_from_slice(col);
    }
    frame(b'D', &row).repeat(2000)
}

fn bench(c: &mut Criterion) {
    let mut group = c.benchmark_group("frame_cursor");
    for (name, buf, inspect) in [
        ("pgbench_requests", requests(), (|t| t == b'X') as fn(u8) -> bool),
        ("data_rows", rows(), |t| t == b'Z'),
        ("data_rows_all_inspected", rows(), |_| true),
    ] {
        group.throughput(Throughput::Bytes(buf.len() as u64));
        group.bench_with_input(BenchmarkId::from_parameter(name), &buf, |b, buf| b.iter(|| walk(buf, inspect)));
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
