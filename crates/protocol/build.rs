//! Rebuild when the stamped version changes, so `BUILD_VERSION` is never stale.
fn main() {
    println!("cargo:rerun-if-env-changed=CMS_BUILD_VERSION");
}
