//! Built-in methods: one file each, one line each in [`all`].

use std::sync::Arc;

use crate::MergeMethod;

mod gta;
mod karcher;
mod linear;

mod arcee_fusion;
mod common;
mod model_stock;
mod multislerp;
mod nearswap;
mod nuslerp;
mod passthrough;
mod ram;
mod ramplus_tl;
mod sce;
mod slerp;

/// Every built-in method. Adding a method: one file in this folder, one line here.
pub(crate) fn all() -> Vec<Arc<dyn MergeMethod>> {
    vec![
        Arc::new(linear::Linear::new()),
        Arc::new(gta::GeneralizedTaskArithmetic::task_arithmetic()),
        Arc::new(gta::GeneralizedTaskArithmetic::ties()),
        Arc::new(gta::GeneralizedTaskArithmetic::dare_ties()),
        Arc::new(gta::GeneralizedTaskArithmetic::dare_linear()),
        Arc::new(gta::GeneralizedTaskArithmetic::breadcrumbs()),
        Arc::new(gta::GeneralizedTaskArithmetic::breadcrumbs_ties()),
        Arc::new(gta::GeneralizedTaskArithmetic::della()),
        Arc::new(gta::GeneralizedTaskArithmetic::della_linear()),
        Arc::new(slerp::Slerp::new()),
        Arc::new(passthrough::Passthrough::new()),
        Arc::new(nearswap::NearSwap::new()),
        Arc::new(model_stock::ModelStock::new()),
        Arc::new(nuslerp::NuSlerp::new()),
        Arc::new(ram::Ram::new()),
        Arc::new(ramplus_tl::RamPlusTl::new()),
        Arc::new(sce::Sce::new()),
        Arc::new(multislerp::MultiSlerp::new()),
        Arc::new(karcher::Karcher::new()),
        Arc::new(arcee_fusion::ArceeFusion::new()),
    ]
}
