//! Criterion benchmarks of the core primitives, without Python in the way.
//!
//! `cargo bench --bench primitives` (or `./dev bench`).

use std::{hint::black_box, num::NonZeroU32};

use _native::{
    ids,
    shard::{self, HashRing},
    snowflake::Generator,
    timer::TimerWheel,
};
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};

fn snowflakes(c: &mut Criterion) {
    let mut group = c.benchmark_group("snowflake");
    group.throughput(Throughput::Elements(1_000));
    let mut generator = Generator::new(7).unwrap();
    group.bench_function("next_many(1000)", |b| {
        b.iter(|| generator.next_many(black_box(1_000)).unwrap());
    });
    group.finish();
}

fn shards(c: &mut Criterion) {
    let entity_ids: Vec<String> = (0..1_000).map(|n| format!("channel-{n}")).collect();
    let per_group = NonZeroU32::new(300).unwrap();
    let mut group = c.benchmark_group("shard");
    group.throughput(Throughput::Elements(1_000));
    group.bench_function("shard_id x1000", |b| {
        b.iter(|| {
            entity_ids
                .iter()
                .map(|id| shard::shard_id(black_box(id), per_group))
                .sum::<u32>()
        });
    });
    group.finish();

    let mut group = c.benchmark_group("hash_ring");
    for runners in [3, 100] {
        let mut ring = HashRing::default();
        for n in 0..runners {
            ring.add(&format!("10.0.0.{n}:34431"), 1.0).unwrap();
        }
        group.bench_function(format!("shards(300) over {runners} runners"), |b| {
            b.iter(|| ring.shards(black_box(300)));
        });
    }
    group.finish();
}

fn timers(c: &mut Criterion) {
    const N: u64 = 100_000;
    let dues: Vec<u64> = (0..N)
        .map(|n| n.wrapping_mul(2_654_435_761) % 86_400_000 + 1)
        .collect();
    let mut group = c.benchmark_group("timer_wheel");
    group.throughput(Throughput::Elements(N));
    group.bench_function("insert 100k over a day", |b| {
        b.iter_batched(
            || TimerWheel::new(0),
            |mut wheel| {
                for (id, &due) in (0..N).zip(&dues) {
                    wheel.insert(id, due);
                }
                wheel
            },
            BatchSize::LargeInput,
        );
    });
    group.bench_function("advance through 100k over a day, hourly", |b| {
        b.iter_batched(
            || {
                let mut wheel = TimerWheel::new(0);
                for (id, &due) in (0..N).zip(&dues) {
                    wheel.insert(id, due);
                }
                wheel
            },
            |mut wheel| {
                let mut fired = 0;
                for hour in 1..=24 {
                    fired += wheel.advance(hour * 3_600_000).len();
                }
                fired
            },
            BatchSize::LargeInput,
        );
    });
    group.bench_function("insert then cancel 100k", |b| {
        b.iter_batched(
            || TimerWheel::new(0),
            |mut wheel| {
                for (id, &due) in (0..N).zip(&dues) {
                    wheel.insert(id, due);
                }
                for id in 0..N {
                    wheel.cancel(id);
                }
                wheel
            },
            BatchSize::LargeInput,
        );
    });
    group.finish();
}

fn execution_ids(c: &mut Criterion) {
    let mut group = c.benchmark_group("ids");
    group.bench_function("execution_id", |b| {
        b.iter(|| ids::execution_id(black_box("ProcessOrder"), black_box("order-123456")));
    });
    group.bench_function("encode_token", |b| {
        b.iter(|| {
            ids::encode_token(
                black_box("ProcessOrder"),
                black_box("da09278eeca46f53cc05e2ed728924aa"),
                black_box("PaymentReceived"),
            )
        });
    });
    group.finish();
}

criterion_group!(benches, snowflakes, shards, timers, execution_ids);
criterion_main!(benches);
