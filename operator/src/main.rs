//! The nixcache operator: reconciles `NixCache` resources. Not implemented yet; this binary only
//! reports that, so the workspace layout is in place for it.

fn main() {
    eprintln!("nixcache-operator: not implemented yet");
    std::process::exit(2);
}
