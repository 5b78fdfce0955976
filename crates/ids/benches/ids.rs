//! Mint, format and parse costs of our ids, with `uuid`'s own v4/v7 in the same run.
//! Targets on the 2-core CI machine: mint + format <= 150 ns, parse <= 50 ns.

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use ids::ThreadId;

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("ids");
    g.bench_function("mint ThreadId (v7)", |b| b.iter(ThreadId::new));
    g.bench_function("mint + format ThreadId", |b| {
        let mut buf = ids::text_buffer();
        b.iter(|| {
            let id = ThreadId::new();
            black_box(id.encode(&mut buf).len())
        })
    });
    g.bench_function("mint + to_string ThreadId", |b| b.iter(|| ThreadId::new().to_string()));
    let text = ThreadId::new().to_string();
    g.bench_function("parse ThreadId", |b| b.iter(|| black_box(&text).parse::<ThreadId>()));
    g.bench_function("serde_json ThreadId", |b| {
        let quoted = format!("\"{text}\"");
        b.iter(|| serde_json::from_str::<ThreadId>(black_box(&quoted)))
    });

    // The baseline: uuid's own constructors and parser (allowed in benches of this crate only).
    #[expect(clippy::disallowed_methods, reason = "baseline for comparison")]
    {
        g.bench_function("uuid::Uuid::new_v4", |b| b.iter(uuid::Uuid::new_v4));
        g.bench_function("uuid::Uuid::now_v7", |b| b.iter(uuid::Uuid::now_v7));
        g.bench_function("uuid::Uuid::parse_str", |b| {
            b.iter(|| uuid::Uuid::parse_str(black_box(&text)))
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
