//! mergekit 0.0.4.2's save order.
//!
//! In that release the scheduler's group label of a tensor load was the *shard file* the input
//! tensor lives in (`model-00001-of-00004`), not the tensor name, so tensors are saved grouped by
//! input shard. Within a group the order follows networkx's lexicographical topological sort
//! over the task graph. (Work in progress: groups by shard label, plan order inside a group.)

use crate::plan::{Model, Op};

fn shard_label(file: &str) -> String {
    let base = file.rsplit('/').next().unwrap_or(file);
    let stem = base.rsplit_once('.').map_or(base, |(s, _)| s);
    stem.to_lowercase().replace("pytorch_model", "model")
}

/// Sorts `ops` into 0.0.4.2's save order.
pub fn sort(ops: &mut [Op], models: &[Model]) {
    let label = |op: &Op| {
        op.inputs
            .iter()
            .map(|i| {
                models[i.model]
                    .source
                    .shard_of(&i.name)
                    .map(|f| shard_label(&f))
                    .unwrap_or_default()
            })
            .max()
            .unwrap_or_default()
    };
    let mut keyed: Vec<(String, usize)> = ops.iter().enumerate().map(|(i, o)| (label(o), i)).collect();
    keyed.sort();
    let order: Vec<Op> = keyed.iter().map(|(_, i)| ops[*i].clone()).collect();
    ops.clone_from_slice(&order);
}
