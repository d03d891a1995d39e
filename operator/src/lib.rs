//! The nixcache operator. So far: the `NixCache` custom resource, defined by these Rust types
//! (the CRD in `crds/` is generated from them). Reconciliation comes next.

pub mod crd;
