//! gupdev.ko builds without a warning against both Debian kernels' headers, fetched into the
//! kernel cache with `apt-get download` (no headers package installed). Needs apt's package
//! lists, the network and the kernels' compiler (gcc-12): only with `NUMASIM_ORACLE=1`
//! (oracle/gupdev/ci.sh sets it).

use oracle::{OracleError, resolve_kernel};

#[test]
fn gupdev_builds_cleanly_against_each_kernels_fetched_headers() {
    if std::env::var("NUMASIM_ORACLE").as_deref() != Ok("1") {
        eprintln!("skipping the gupdev build: set NUMASIM_ORACLE=1 to fetch the kernels' headers and build");
        return;
    }
    for arg in ["6.1", "6.12"] {
        let k = match resolve_kernel(arg) {
            Ok(k) => k,
            Err(OracleError::Input(e)) => {
                eprintln!("skipping the gupdev build for {arg}: {e}");
                continue;
            }
            Err(e) => panic!("kernel {arg}: {e}"),
        };
        let started = std::time::Instant::now();
        let ko = oracle::gupdev::module_for(&k).unwrap_or_else(|e| panic!("gupdev for {}: {e}", k.release()));
        let log = std::fs::read_to_string(ko.with_file_name("build.log")).unwrap_or_default();
        assert!(!log.contains("warning:"), "warnings building for {}:\n{log}", k.release());
        let tree = oracle::kernel::headers_tree(k.release()).unwrap();
        assert!(tree.starts_with(oracle::cache_dir()), "built against the cache, not {}", tree.display());
        eprintln!("gupdev: {} built in {:.1} s", ko.display(), started.elapsed().as_secs_f64());
    }
}
