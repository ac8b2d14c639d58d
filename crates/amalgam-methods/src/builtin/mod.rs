//! Built-in methods: one file each, one line each in the list below.

use std::sync::Arc;

use crate::MergeMethod;

pub(crate) mod blocks;
pub mod common;

/// Declares each method file as a module and lists the methods it provides, in registration
/// order. Adding a built-in method is one file in this folder and one line here.
macro_rules! builtin_methods {
    ($($file:ident => [$($ctor:expr),+ $(,)?]),+ $(,)?) => {
        $(mod $file;)+

        /// Every built-in method.
        pub(crate) fn all() -> Vec<Arc<dyn MergeMethod>> {
            vec![$($(Arc::new({ use $file::*; $ctor }) as Arc<dyn MergeMethod>),+),+]
        }
    };
}

builtin_methods! {
    linear => [Linear::new()],
    gta => [
        GeneralizedTaskArithmetic::task_arithmetic(),
        GeneralizedTaskArithmetic::ties(),
        GeneralizedTaskArithmetic::dare_ties(),
        GeneralizedTaskArithmetic::dare_linear(),
        GeneralizedTaskArithmetic::breadcrumbs(),
        GeneralizedTaskArithmetic::breadcrumbs_ties(),
        GeneralizedTaskArithmetic::della(),
        GeneralizedTaskArithmetic::della_linear(),
    ],
    slerp => [Slerp::new()],
    passthrough => [Passthrough::new()],
    nearswap => [NearSwap::new()],
    model_stock => [ModelStock::new()],
    nuslerp => [NuSlerp::new()],
    ram => [Ram::new()],
    ramplus_tl => [RamPlusTl::new()],
    sce => [Sce::new()],
    multislerp => [MultiSlerp::new()],
    karcher => [Karcher::new()],
    arcee_fusion => [ArceeFusion::new()],
}
