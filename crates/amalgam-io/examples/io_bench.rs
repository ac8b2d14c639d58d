//! Throughput benchmark of the tensor I/O path (not a test): see `bench/io.sh` and `docs/io.md`.
//!
//! `io_bench gen <file> <MiB>`: writes a BF16 safetensors file of about that size (a handful of
//! 2-D tensors of pseudo-random values) with the crate's own writer.
//! `io_bench convert <file> [out-folder] [threads]`: maps the file, converts every tensor to F32
//! in 512 KiB pieces and either discards the result or writes it to `out-folder` with the
//! positioned writer. Prints the wall time in seconds on stdout.

use std::path::Path;
use std::time::Instant;

use amalgam_io::{
    convert, DType, IndexStyle, OutputWriter, PlannedTensor, SafetensorsFile, ShardLayout,
    ShardRule, ShardSpec,
};
use rayon::prelude::*;

const PIECE: usize = 256 << 10; // BF16 elements per piece: 512 KiB in, 1 MiB out.

fn spec() -> ShardSpec {
    ShardSpec {
        rule: ShardRule::Bytes(0),
        style: IndexStyle::Modern,
        mergekit_version: "0.1.5".into(),
    }
}

fn gen(file: &Path, mib: usize) -> Result<(), Box<dyn std::error::Error>> {
    let rows = 4096usize;
    let cols = 8192usize; // 64 MiB per BF16 tensor
    let n = (mib * (1 << 20)).div_ceil(rows * cols * 2);
    let tensors: Vec<PlannedTensor> = (0..n)
        .map(|i| PlannedTensor {
            name: format!("model.layers.{i}.weight"),
            dtype: DType::BF16,
            shape: vec![rows, cols],
        })
        .collect();
    let dir = file.with_extension("gen");
    let w = OutputWriter::create(&dir, ShardLayout::plan(tensors.clone(), &spec())?)?;
    let mut buf = vec![0u8; rows * cols * 2];
    let mut state = 0x1234_5678u32;
    for t in &tensors {
        for c in buf.chunks_exact_mut(2) {
            state ^= state << 13;
            state ^= state >> 17;
            state ^= state << 5;
            let x = (state as f32 / u32::MAX as f32 - 0.5) * 0.04;
            c.copy_from_slice(&convert::f32_to_bf16(x).to_le_bytes());
        }
        w.write_tensor(&t.name, &buf)?;
    }
    w.finish()?;
    std::fs::rename(dir.join("model.safetensors"), file)?;
    std::fs::remove_dir_all(&dir)?;
    Ok(())
}

fn run(file: &Path, out: Option<&Path>) -> Result<(), Box<dyn std::error::Error>> {
    let t0 = Instant::now();
    let src = SafetensorsFile::open(file)?;
    let planned: Vec<PlannedTensor> = src
        .tensors()
        .iter()
        .map(|t| PlannedTensor {
            name: t.name.clone(),
            dtype: DType::F32,
            shape: t.shape.clone(),
        })
        .collect();
    let writer = match out {
        Some(o) => Some(OutputWriter::create(
            o,
            ShardLayout::plan(planned, &spec())?,
        )?),
        None => None,
    };
    let mut checksum = 0u64;
    for info in src.tensors() {
        if std::env::var_os("NO_PREFETCH").is_none() {
            src.prefetch(&info.name);
        }
        let data = src.get(&info.name).ok_or("tensor vanished")?.data;
        let pieces: Vec<&[u8]> = data.chunks(PIECE * 2).collect();
        let sums: Result<Vec<u64>, amalgam_io::Error> = pieces
            .par_iter()
            .enumerate()
            .map_init(
                || vec![0u8; PIECE * 4],
                |buf, (k, piece)| {
                    let dst = &mut buf[..piece.len() * 2];
                    convert::convert_bytes(DType::BF16, piece, DType::F32, dst)?;
                    if let Some(w) = &writer {
                        w.write_tensor_part(&info.name, (k * PIECE * 4) as u64, dst)?;
                    }
                    // Touch the result so the conversion cannot be optimised away.
                    Ok(dst.iter().step_by(4096).map(|&b| b as u64).sum())
                },
            )
            .collect();
        checksum = checksum.wrapping_add(sums?.iter().sum::<u64>());
        src.release(&info.name);
    }
    if let Some(w) = writer {
        w.finish()?;
    }
    println!("{:.3}", t0.elapsed().as_secs_f64());
    eprintln!("checksum {checksum}");
    Ok(())
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    match args.get(1).map(String::as_str) {
        Some("gen") if args.len() == 4 => gen(Path::new(&args[2]), args[3].parse()?),
        Some("mem") if args.len() == 3 => {
            // Pure conversion speed from the heap, no file: MiB given.
            let n: usize = args[2].parse::<usize>()? << 19;
            let src: Vec<u8> = (0..n * 2).map(|i| (i * 7) as u8).collect();
            let mut dst = vec![0u8; n * 4];
            for _ in 0..3 {
                let t0 = Instant::now();
                convert::convert_bytes(DType::BF16, &src, DType::F32, &mut dst)?;
                println!("{:.3}", t0.elapsed().as_secs_f64());
            }
            Ok(())
        }
        Some("convert") if args.len() >= 3 => {
            if let Some(t) = args.get(4) {
                rayon::ThreadPoolBuilder::new()
                    .num_threads(t.parse()?)
                    .build_global()?;
            }
            let out = args.get(3).filter(|s| *s != "-").map(Path::new);
            run(Path::new(&args[2]), out)
        }
        _ => Err(
            "usage: io_bench gen <file> <MiB> | io_bench convert <file> [out-folder|-] [threads]"
                .into(),
        ),
    }
}
