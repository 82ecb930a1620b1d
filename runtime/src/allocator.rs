//! glibc malloc settings for a process that moves bytes in 64 KiB–256 KiB buffers.
//!
//! glibc's defaults suit programs that allocate small objects: it hands the top of a heap back
//! to the kernel as soon as more than 128 KiB is free there (`M_TRIM_THRESHOLD`), and serves
//! blocks above a sliding threshold (initially 128 KiB) from a fresh `mmap` each time. A tunnel
//! allocates and frees DATA payloads and HTTP/2 frame buffers of up to 256 KiB thousands of
//! times a second, so with the defaults every few packets memory was `madvise`d away and faulted back
//! in, zero-filled: ~12 % of server + agent CPU in the bulk profile (connect-uds/gRPC), and
//! ~20 % less CPU per GiB with [`tune`] applied (bench, A/B on the same machine).
//!
//! An operator who set glibc's own knobs (`MALLOC_TRIM_THRESHOLD_`, `MALLOC_MMAP_THRESHOLD_`,
//! or the same tunables in `GLIBC_TUNABLES`) keeps them: [`tune`] then changes nothing.

/// Free bytes at the top of a malloc heap kept for reuse instead of returned to the kernel.
/// Cost: after a burst, up to this much idle RSS per malloc arena (glibc makes at most eight
/// per CPU, in practice about one per busy thread) stays resident until the next burst.
pub const TRIM_THRESHOLD_BYTES: i32 = 4 << 20;

/// Blocks up to this size come from the heaps (reused) rather than from a fresh `mmap` (zeroed
/// page by page on first touch, unmapped on free). Cost: a freed block below it can only be
/// reused by malloc, not returned to the kernel on its own; the 256 KiB payloads and HTTP/2
/// frame buffers are well below it.
pub const MMAP_THRESHOLD_BYTES: i32 = 1 << 20;

/// Environment variables through which an operator sets the same knobs; any of them present
/// means the operator chose, and [`tune`] leaves glibc alone.
const OPERATOR_VARIABLES: [&str; 2] = ["MALLOC_TRIM_THRESHOLD_", "MALLOC_MMAP_THRESHOLD_"];

/// `GLIBC_TUNABLES` entries for the same knobs.
const OPERATOR_TUNABLES: [&str; 2] = ["glibc.malloc.trim_threshold", "glibc.malloc.mmap_threshold"];

/// What [`tune`] did, for the start-up log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Tuning {
    /// Both thresholds set to this module's constants.
    Applied,
    /// The operator configured malloc through this variable; nothing changed.
    LeftToOperator(&'static str),
    /// Not glibc (e.g. a musl build): its allocator has no such knobs.
    Unsupported,
}

/// glibc refused a setting (it never does for these values on a 64-bit glibc).
#[derive(Debug, thiserror::Error)]
#[error("glibc refused mallopt({parameter}, {value}); malloc keeps its defaults for it")]
pub struct TuneError {
    /// The `M_*` parameter's name.
    pub parameter: &'static str,
    /// The value refused.
    pub value: i32,
}

/// The variable through which the operator already configured malloc, if any. `env` reads one
/// environment variable (a parameter so tests need not touch the process environment).
pub fn operator_setting(env: impl Fn(&str) -> Option<String>) -> Option<&'static str> {
    if let Some(var) = OPERATOR_VARIABLES.into_iter().find(|v| env(v).is_some()) {
        return Some(var);
    }
    let tunables = env("GLIBC_TUNABLES")?;
    // Format: name=value:name=value.
    tunables
        .split(':')
        .filter_map(|entry| entry.split_once('=').map(|(name, _)| name))
        .any(|name| OPERATOR_TUNABLES.contains(&name))
        .then_some("GLIBC_TUNABLES")
}

/// Applies [`TRIM_THRESHOLD_BYTES`] and [`MMAP_THRESHOLD_BYTES`] unless the operator configured
/// malloc. Call first thing in `main`, before any thread exists.
pub fn tune() -> Result<Tuning, TuneError> {
    if let Some(var) = operator_setting(|name| std::env::var(name).ok()) {
        return Ok(Tuning::LeftToOperator(var));
    }
    apply()
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn apply() -> Result<Tuning, TuneError> {
    for (parameter, code, value) in [
        (
            "M_TRIM_THRESHOLD",
            libc::M_TRIM_THRESHOLD,
            TRIM_THRESHOLD_BYTES,
        ),
        (
            "M_MMAP_THRESHOLD",
            libc::M_MMAP_THRESHOLD,
            MMAP_THRESHOLD_BYTES,
        ),
    ] {
        // SAFETY: mallopt takes two integers, touches only malloc's own state under its arena
        // lock, and is documented as callable at any time; no Rust invariant is involved.
        #[allow(unsafe_code)]
        let accepted = unsafe { libc::mallopt(code, value) };
        if accepted != 1 {
            return Err(TuneError { parameter, value });
        }
    }
    Ok(Tuning::Applied)
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn apply() -> Result<Tuning, TuneError> {
    Ok(Tuning::Unsupported)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env_of(pairs: &'static [(&'static str, &'static str)]) -> impl Fn(&str) -> Option<String> {
        move |name| {
            pairs
                .iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| v.to_string())
        }
    }

    #[test]
    fn an_unconfigured_environment_is_ours_to_tune() {
        assert_eq!(operator_setting(env_of(&[])), None);
        assert_eq!(
            operator_setting(env_of(&[("GLIBC_TUNABLES", "glibc.pthread.rseq=0")])),
            None
        );
    }

    #[test]
    fn an_operator_setting_is_left_alone() {
        assert_eq!(
            operator_setting(env_of(&[("MALLOC_MMAP_THRESHOLD_", "65536")])),
            Some("MALLOC_MMAP_THRESHOLD_")
        );
        assert_eq!(
            operator_setting(env_of(&[(
                "GLIBC_TUNABLES",
                "glibc.pthread.rseq=0:glibc.malloc.trim_threshold=0"
            )])),
            Some("GLIBC_TUNABLES")
        );
    }

    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    #[test]
    fn glibc_accepts_both_thresholds() {
        assert_eq!(apply().expect("glibc accepts them"), Tuning::Applied);
        // Allocating and freeing above the old thresholds still works.
        let big = vec![7u8; 512 << 10];
        assert_eq!(
            big.iter().map(|&b| u64::from(b)).sum::<u64>(),
            7 * (512 << 10)
        );
    }
}
