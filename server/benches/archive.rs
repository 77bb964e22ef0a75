//! The archive's cost against its parts, on realistic events (~500-byte JSON payloads with
//! Monoskope-like metadata): zstd alone at the default level (plain, and as the writer sets it
//! up), AES-256-GCM alone, the full writer (encode + compress + encrypt), zstd decompression
//! alone and the full reader.
//! Throughput is in bytes of the uncompressed record stream. Results: docs/BENCHMARKS.md.

#![allow(
    missing_docs,
    reason = "criterion_group! generates an undocumented function"
)]

use aes_gcm::aead::{AeadInOut, KeyInit};
use aes_gcm::{Aes256Gcm, Nonce};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use monoskope_backup::archive::{
    ArchiveReader, ArchiveWriter, Keyring, Keys, MasterKey, Protection, Record, WriterOptions,
    DEFAULT_COMPRESSION_LEVEL,
};
use monoskope_backup::source::record_from_event;
use prost::Message;

fn records() -> Vec<Record> {
    monoskope_backup::devstore::sample::events(20_000, 2_000, 1_700_000_000, 3)
        .map(record_from_event)
        .collect()
}

fn bench(c: &mut Criterion) {
    let records = records();
    let mut stream = Vec::new();
    for r in &records {
        r.encode_length_delimited(&mut stream).expect("encode");
    }
    let chunks: Vec<&[u8]> = stream.chunks(1 << 20).collect();
    let key = MasterKey::from_bytes([9; 32]);
    let mut g = c.benchmark_group("archive");
    g.throughput(Throughput::Bytes(stream.len() as u64));
    g.sample_size(10);

    g.bench_function("zstd_compress_alone", |b| {
        let mut z = zstd::bulk::Compressor::new(DEFAULT_COMPRESSION_LEVEL).expect("zstd");
        b.iter(|| {
            chunks
                .iter()
                .map(|c| z.compress(c).expect("compress").len())
                .sum::<usize>()
        })
    });
    g.bench_function("zstd_compress_writer_alone", |b| {
        let mut z = monoskope_backup::archive::chunk_compressor(DEFAULT_COMPRESSION_LEVEL, true)
            .expect("zstd");
        b.iter(|| {
            chunks
                .iter()
                .map(|c| z.compress(c).expect("compress").len())
                .sum::<usize>()
        })
    });
    g.bench_function("aes256gcm_alone", |b| {
        let cipher = Aes256Gcm::new((&[7u8; 32]).into());
        let mut buf = Vec::with_capacity((1 << 20) + 16);
        b.iter(|| {
            for (i, c) in chunks.iter().enumerate() {
                buf.clear();
                buf.extend_from_slice(c);
                let mut n = [0u8; 12];
                n[..4].copy_from_slice(&(i as u32).to_be_bytes());
                cipher
                    .encrypt_in_place(&Nonce::from(n), b"", &mut buf)
                    .expect("encrypt");
            }
        })
    });
    let write = || {
        let mut w = ArchiveWriter::new(
            Vec::with_capacity(stream.len() / 3),
            WriterOptions::new("20261124T000000000Z-00000000", Protection::Key(key.clone())),
        )
        .expect("writer");
        for r in &records {
            w.append(r).expect("append");
        }
        w.finish().expect("finish").0
    };
    g.bench_function("writer_full", |b| b.iter(write));
    let archive = write();
    let compressed: Vec<Vec<u8>> = chunks
        .iter()
        .map(|c| zstd::bulk::compress(c, DEFAULT_COMPRESSION_LEVEL).expect("compress"))
        .collect();
    g.bench_function("zstd_decompress_alone", |b| {
        let mut d = zstd::bulk::Decompressor::new().expect("zstd");
        b.iter(|| {
            compressed
                .iter()
                .map(|c| d.decompress(c, 1 << 20).expect("decompress").len())
                .sum::<usize>()
        })
    });
    let keys = Keys::keyring(Keyring::new(vec![key.clone()]).expect("ring"));
    g.bench_function("reader_full", |b| {
        b.iter(|| {
            let mut r = ArchiveReader::open(archive.as_slice(), &keys).expect("open");
            r.verify_to_end().expect("verify").event_count
        })
    });
    g.finish();
    let json_lines: usize = records
        .iter()
        .map(|r| {
            serde_json::to_vec(&monoskope_backup::cli::record_json(r))
                .expect("json")
                .len()
                + 1
        })
        .sum();
    let mut jl = Vec::with_capacity(json_lines);
    for r in &records {
        jl.extend(serde_json::to_vec(&monoskope_backup::cli::record_json(r)).expect("json"));
        jl.push(b'\n');
    }
    let zjl = zstd::bulk::compress(&jl, DEFAULT_COMPRESSION_LEVEL)
        .expect("compress")
        .len();
    println!(
        "sizes: record stream {} B, archive {} B, JSON lines {} B, zstd-{DEFAULT_COMPRESSION_LEVEL}(JSON lines) {} B, archive/zstd(JSON lines) = {:.3}",
        stream.len(),
        archive.len(),
        jl.len(),
        zjl,
        archive.len() as f64 / zjl as f64
    );
}

criterion_group!(benches, bench);
criterion_main!(benches);
