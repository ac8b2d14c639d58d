//! Writing a plan to an output folder: shard layout, the streaming executor, side files, and the
//! final rename that makes the folder appear only when complete. Merge and unmix both end here.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use amalgam_io::OutputWriter;

use crate::error::Result;
use crate::exec::{self, ExecOptions};
use crate::plan::{Op, Plan};

/// Which of the donor's tokenizer files to copy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TokenizerCopy {
    /// None.
    No,
    /// mergekit's rule: only when the donor has both a tokenizer config and a tokenizer (else a
    /// warning), then every file of [`crate::side::TOKENIZER_FILES`] present.
    WhenComplete,
    /// Every file of [`crate::side::TOKENIZER_FILES`] the donor has.
    All,
}

/// What to write besides the tensors.
pub(crate) struct OutputFiles {
    /// `--out-shard-size`.
    pub out_shard_size: Option<u64>,
    /// The executor's settings (seed, progress).
    pub exec: ExecOptions,
    /// `config.json`, serialised.
    pub config_json: Option<Vec<u8>>,
    /// Other files by name (model card, `mergekit_config.yml`), written in this order.
    pub files: Vec<(&'static str, Vec<u8>)>,
    /// Tokenizer files to copy from the plan's donor.
    pub tokenizer: TokenizerCopy,
    /// Output tensors written as several (`--moe-layout per-expert`): op name -> the tensors
    /// its bytes go to, in order.
    pub split: crate::plan::OutputSplit,
}

/// Writes each op of `split` as its parts: the op's bytes `a..b` go to the parts covering that
/// range, so the per-expert layout is the fused bytes cut at matrix boundaries.
struct SplitSink<'a> {
    writer: &'a OutputWriter,
    /// Op name -> (part name, part length in bytes).
    parts: HashMap<String, Vec<(String, u64)>>,
}

impl exec::Sink for SplitSink<'_> {
    fn put(&self, op: &Op, offset: u64, bytes: &[u8]) -> Result<()> {
        let Some(parts) = self.parts.get(&op.out_name) else {
            return Ok(self.writer.write_tensor_part(&op.out_name, offset, bytes)?);
        };
        let end = offset + bytes.len() as u64;
        let mut at = 0u64;
        for (name, len) in parts {
            let (a, b) = (at, at + len);
            at = b;
            let (s, e) = (offset.max(a), end.min(b));
            if s < e {
                let piece = &bytes[(s - offset) as usize..(e - offset) as usize];
                self.writer.write_tensor_part(name, s - a, piece)?;
            }
        }
        Ok(())
    }
}

/// Writes `plan` into `out` and returns the final folder.
pub(crate) fn write_plan(plan: &Plan, out: &Path, files: &OutputFiles) -> Result<PathBuf> {
    let layout = plan.layout_with(files.out_shard_size, &files.split)?;
    let writer = OutputWriter::create(out, layout)?;
    if files.split.is_empty() {
        exec::execute(plan, &writer, &files.exec)?;
    } else {
        let mut parts = HashMap::new();
        for op in &plan.ops {
            if let Some(p) = files.split.get(&op.out_name) {
                let es = op.out_dtype.size() as u64;
                let p = p
                    .iter()
                    .map(|(n, s)| (n.clone(), s.iter().product::<usize>() as u64 * es))
                    .collect();
                parts.insert(op.out_name.clone(), p);
            }
        }
        let sink = SplitSink {
            writer: &writer,
            parts,
        };
        exec::execute(plan, &sink, &files.exec)?;
    }
    if let Some(cfg) = &files.config_json {
        writer.write_file("config.json", cfg)?;
    }
    for (name, bytes) in &files.files {
        writer.write_file(name, bytes)?;
    }
    let donor = plan.models.get(plan.donor);
    if let (Some(donor), true) = (donor, files.tokenizer != TokenizerCopy::No) {
        let folder = donor.source.folder_ref();
        let complete = folder.aux_file("tokenizer_config.json").is_some()
            && (folder.aux_file("tokenizer.json").is_some()
                || folder.aux_file("tokenizer.model").is_some());
        if donor.reference.lora.is_some() && complete {
            // peft's merged copy has no tokenizer files, so mergekit saves the donor's tokenizer
            // again through transformers (and copies no generation_config.json); the copy
            // equals that only when transformers wrote the files.
            tracing::warn!(
                "donor model {} has a LoRA adapter: its tokenizer files are copied as they are, \
                 where mergekit re-saves them with transformers (docs/models.md, LoRA adapters)",
                donor.label
            );
        }
        if files.tokenizer == TokenizerCopy::All || complete {
            for f in crate::side::TOKENIZER_FILES {
                // Re-saving a tokenizer writes no generation config (mergekit's LoRA donor).
                if donor.reference.lora.is_some() && f == "generation_config.json" {
                    continue;
                }
                if let Some(p) = folder.aux_file(f) {
                    writer.copy_file(f, &p)?;
                }
            }
        } else {
            tracing::warn!(
                "donor model {} has no tokenizer files to copy; the output has no tokenizer",
                donor.label
            );
        }
    }
    // mergekit copies the architecture's tagalong files (processor configs) from the donor
    // whatever the tokenizer options.
    if let Some(donor) = donor {
        let folder = donor.source.folder_ref();
        for f in plan.tagalong {
            if let Some(p) = folder.aux_file(f) {
                writer.copy_file(f, &p)?;
            }
        }
    }
    Ok(writer.finish()?)
}
